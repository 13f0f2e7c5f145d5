//! Arbitrary bytes into the iSCSI PDU reader, the text-key decoder, the
//! target's parameter negotiation and the CHAP value decoder: none may panic.
#![no_main]

use kiln::iscsi::pdu::{Digests, Pdu};
use kiln::iscsi::text::{self, LocalParams, Negotiator, Role};
use kiln::iscsi::{chap, scsi};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let digests = Digests {
        header: selector & 1 != 0,
        data: selector & 2 != 0,
    };
    let limit = if selector & 4 != 0 { 512 } else { 1 << 16 };
    let mut reader = bytes;
    // Read PDUs until the input runs out or one is refused out of step.
    while let Ok(pdu) = Pdu::read_from(&mut reader, &digests, limit) {
        let mut again = Vec::new();
        pdu.write_to(&mut again, &digests).expect("a parsed PDU re-encodes");
        if let kiln::iscsi::pdu::Header::ScsiCommand(command) = &pdu.header {
            let _ = scsi::Lun::data_out_length(&command.cdb);
        }
    }
    if let Ok(keys) = text::decode(bytes) {
        let mut target = Negotiator::new(Role::Target, LocalParams::default());
        let _ = target.receive(&keys);
        for (key, value) in &keys {
            let _ = chap::decode_binary("CHAP_R", value);
            let _ = chap::Challenge::from_keys(key, value);
        }
    }
});
