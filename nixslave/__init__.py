"""nixslave: NixOS machines that are configured from the outside, never from within."""

__version__ = "0.1.0"
