# kiln-agent: the deploy ramdisk also needs the drivers of real servers' disks
# and network cards, and dmi_sysfs for the inventory's DMI tables. Names the
# host kernel lacks are skipped (with a warning) by busybox-minimal.
export DIB_KILN_AGENT_MODULES=${DIB_KILN_AGENT_MODULES:-"virtio_pci virtio_blk virtio_scsi virtio_net sd_mod sr_mod ata_piix ahci nvme megaraid_sas mpt3sas e1000 e1000e igb ixgbe i40e ice bnxt_en tg3 mlx5_core dmi_sysfs"}
export DIB_BUSYBOX_MODULES="${DIB_BUSYBOX_MODULES:-} $DIB_KILN_AGENT_MODULES"
