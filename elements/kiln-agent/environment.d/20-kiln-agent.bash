# kiln-agent: the deploy ramdisk's drivers are those of servers' disks and
# network cards (and dmi_sysfs for the inventory's DMI tables), in place of
# busybox-minimal's list: the agent writes whole disks and mounts no
# filesystem, and every module is sent to every node. Names the host kernel
# lacks are skipped (with a warning) by busybox-minimal.
export DIB_KILN_AGENT_MODULES=${DIB_KILN_AGENT_MODULES:-"virtio_pci virtio_blk virtio_scsi virtio_net sd_mod sr_mod ata_piix ahci nvme megaraid_sas mpt3sas e1000 e1000e igb ixgbe i40e ice bnxt_en tg3 mlx5_core dmi_sysfs"}
export DIB_BUSYBOX_MODULES=$DIB_KILN_AGENT_MODULES
