//! The `manual` power driver: for nodes without a controller kiln can reach.
//! It records the state the conductor asked for and tells the operator (on
//! stderr, the conductor's log) what to do by hand.

use std::sync::Mutex;

use super::{BootDevice, PowerDriver, PowerState, Result};

/// A node an operator powers by hand.
#[derive(Debug)]
pub struct ManualDriver {
    node: String,
    state: Mutex<Recorded>,
}

#[derive(Debug, Clone, Copy)]
struct Recorded {
    power: PowerState,
    boot: Option<(BootDevice, bool)>,
}

impl ManualDriver {
    /// A manual node believed to be in `state` now.
    pub fn new(node: &str, state: PowerState) -> Self {
        ManualDriver {
            node: node.to_string(),
            state: Mutex::new(Recorded {
                power: state,
                boot: None,
            }),
        }
    }

    /// The last boot device requested (device, persistent), if any.
    pub fn requested_boot_device(&self) -> Option<(BootDevice, bool)> {
        self.recorded().boot
    }

    fn recorded(&self) -> Recorded {
        // A poisoned lock only means another thread panicked while holding a
        // copyable record: the record itself is still whole.
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut Recorded)) {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn tell(&self, what: &str) {
        eprintln!("node {}: manual power: operator, please {what}", self.node);
    }
}

impl PowerDriver for ManualDriver {
    fn driver_name(&self) -> &'static str {
        "manual"
    }

    fn power_state(&self) -> Result<PowerState> {
        Ok(self.recorded().power)
    }

    fn power_on(&self) -> Result<()> {
        if self.recorded().power != PowerState::On {
            let boot = match self.recorded().boot {
                Some((device, _)) => format!(" (boot from {device})"),
                None => String::new(),
            };
            self.tell(&format!("power the node on{boot}"));
            self.update(|r| r.power = PowerState::On);
        }
        Ok(())
    }

    fn power_off(&self) -> Result<()> {
        if self.recorded().power != PowerState::Off {
            self.tell("power the node off");
            self.update(|r| r.power = PowerState::Off);
        }
        Ok(())
    }

    fn reboot(&self) -> Result<()> {
        self.tell("reset the node");
        self.update(|r| r.power = PowerState::On);
        Ok(())
    }

    fn set_boot_device(&self, device: BootDevice, persistent: bool) -> Result<()> {
        let how = if persistent { "from now on" } else { "once" };
        self.tell(&format!("set the node to boot from {device} {how}"));
        self.update(|r| r.boot = Some((device, persistent)));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_driver_records_what_was_asked() {
        let d = ManualDriver::new("n1", PowerState::Off);
        assert_eq!(d.power_state().unwrap(), PowerState::Off);
        d.power_on().unwrap();
        assert_eq!(d.power_state().unwrap(), PowerState::On);
        d.set_boot_device(BootDevice::Disk, true).unwrap();
        assert_eq!(d.requested_boot_device(), Some((BootDevice::Disk, true)));
        d.power_off().unwrap();
        assert_eq!(d.power_state().unwrap(), PowerState::Off);
        d.reboot().unwrap();
        assert_eq!(d.power_state().unwrap(), PowerState::On);
    }
}
