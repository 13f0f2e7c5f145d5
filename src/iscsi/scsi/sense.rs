//! SCSI status codes and fixed-format sense data (SPC-4 §4.5.3).

/// SCSI status byte values.
pub mod status {
    pub const GOOD: u8 = 0x00;
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Sense keys.
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const ABORTED_COMMAND: u8 = 0xb;
}

/// A sense key with its additional sense code and qualifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
}

impl Sense {
    pub const INVALID_OPCODE: Sense = Sense::illegal(0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::illegal(0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::illegal(0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::illegal(0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::illegal(0x26, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::illegal(0x1a, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::illegal(0x39, 0x00);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense {
        key: key::MEDIUM_ERROR,
        asc: 0x11,
        ascq: 0x00,
    };
    pub const WRITE_ERROR: Sense = Sense {
        key: key::MEDIUM_ERROR,
        asc: 0x0c,
        ascq: 0x00,
    };
    /// Data-Out shorter than the CDB asked for (iSCSI underflow of a write).
    pub const DATA_PHASE_ERROR: Sense = Sense {
        key: key::ABORTED_COMMAND,
        asc: 0x4b,
        ascq: 0x00,
    };
    pub const NO_SENSE: Sense = Sense {
        key: key::NO_SENSE,
        asc: 0,
        ascq: 0,
    };

    const fn illegal(asc: u8, ascq: u8) -> Sense {
        Sense {
            key: key::ILLEGAL_REQUEST,
            asc,
            ascq,
        }
    }

    /// The 18-byte fixed-format sense data of a current error.
    pub fn fixed(&self) -> [u8; 18] {
        let mut data = [0u8; 18];
        data[0] = 0x70;
        data[2] = self.key & 0x0f;
        data[7] = 10;
        data[12] = self.asc;
        data[13] = self.ascq;
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let data = Sense::LBA_OUT_OF_RANGE.fixed();
        assert_eq!(data[0], 0x70);
        assert_eq!(data[2], 0x05);
        assert_eq!(data[7] as usize, data.len() - 8);
        assert_eq!((data[12], data[13]), (0x21, 0x00));
    }
}
