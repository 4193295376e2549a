"""The image builder: ``cryptboot mkinitramfs`` (not on the boot path)."""
