"""The hand-off to the real root: switch_root, pivot_root and the ramroot flow.

Everything here runs in the initramfs on every boot: stdlib only, no heavy imports.
"""
