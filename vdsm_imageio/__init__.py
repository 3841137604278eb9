"""vdsm-imageio: disk image transfer service for oVirt hosts."""

__version__ = "0.1.0"
