//! `kiln vnode` (hidden): the command a BMC emulator runs to drive a virtual
//! node, the VM the `qemu` power driver would start (see deploy::power::vnode).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use crate::deploy::power::vnode::{self, BootMode, VnodeAction};
use crate::deploy::power::{BootDevice, PowerState};

#[derive(Args)]
pub struct VnodeArgs {
    /// The node's definition: the qemu driver's node as JSON (disk, MAC,
    /// firmware, state dir, deploy kernel/initramfs, kernel command line with
    /// the conductor's URL, conductor port)
    #[arg(long, value_name = "FILE.json")]
    node: PathBuf,
    #[command(subcommand)]
    command: VnodeCommand,
}

#[derive(Subcommand)]
enum VnodeCommand {
    /// Start the VM (nothing happens when it runs)
    PowerOn,
    /// Pull the plug (nothing happens when it is off)
    PowerOff,
    /// Off, then on from the next boot device
    Reset,
    /// Print "on" or "off"
    Status,
    /// Choose what the next power on boots
    BootDevice {
        device: DeviceArg,
        /// For every later power on too, not only the next
        #[arg(long)]
        persistent: bool,
        /// Refuse when the VM's firmware cannot boot this way
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// The deploy ramdisk (the qemu driver's network boot)
    Pxe,
    Disk,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    Uefi,
    Legacy,
}

pub fn run(args: VnodeArgs) -> Result<u8> {
    let action = match args.command {
        VnodeCommand::PowerOn => VnodeAction::PowerOn,
        VnodeCommand::PowerOff => VnodeAction::PowerOff,
        VnodeCommand::Reset => VnodeAction::Reset,
        VnodeCommand::Status => VnodeAction::Status,
        VnodeCommand::BootDevice {
            device,
            persistent,
            mode,
        } => VnodeAction::BootDevice {
            device: match device {
                DeviceArg::Pxe => BootDevice::Network,
                DeviceArg::Disk => BootDevice::Disk,
            },
            persistent,
            mode: mode.map(|m| match m {
                ModeArg::Uefi => BootMode::Uefi,
                ModeArg::Legacy => BootMode::Legacy,
            }),
        },
    };
    if let Some(state) = vnode::run(&args.node, action)? {
        println!(
            "{}",
            match state {
                PowerState::On => "on",
                PowerState::Off => "off",
            }
        );
    }
    Ok(0)
}
