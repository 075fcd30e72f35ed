#!/bin/sh
# mmdebstrap essential hook: runs before the --include packages are installed, so the
# debconf answers are in place when locales and grub-pc configure.
set -e
cat <<SEL | chroot "$1" debconf-set-selections
locales locales/locales_to_be_generated multiselect en_US.UTF-8 UTF-8
locales locales/default_environment_locale select C.UTF-8
grub-pc grub-pc/install_devices multiselect
grub-pc grub-pc/install_devices_empty boolean true
SEL
