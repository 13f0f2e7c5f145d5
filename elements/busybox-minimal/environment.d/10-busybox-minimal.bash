# busybox-minimal: a root of busybox-static with the host's kernel.
export DISTRO_NAME=${DISTRO_NAME:-busybox}
export DIB_INIT_SYSTEM=${DIB_INIT_SYSTEM:-busybox}
# Modules the image and its initramfs carry (with their dependencies): disks
# and networks of qemu and common servers, the filesystems kiln makes.
export DIB_BUSYBOX_MODULES=${DIB_BUSYBOX_MODULES:-"virtio_pci virtio_blk virtio_scsi virtio_net sd_mod ata_piix ahci nvme e1000 crc32c_generic ext4 xfs vfat nls_cp437 nls_ascii nls_iso8859_1"}
