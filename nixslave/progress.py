"""The one way nixslave reports progress: a callback that takes a line of text.

Library code never prints.  A long step (a Nix build, copying a closure, an
appliance launch, a boot) tells its caller what it is doing by calling the
``progress`` argument every public function accepts; the CLI passes a rich
printer, a test passes ``list.append``, an embedding tool passes its logger.
``None`` means silence.

The message parameter is positional-only, so any one-argument callable fits,
whatever its parameter is called: ``print``, ``messages.append``,
``logging.getLogger("lab").info`` or a lambda.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Progress"]


class Progress(Protocol):
    """Receives one human-readable line per step of a long operation.

    The line has no trailing newline and no markup; it may be shown, logged
    or ignored.  Callbacks should return quickly: they run on the thread
    doing the work.

    Example:

        >>> import nixslave
        >>> steps: list[str] = []
        >>> spec = nixslave.MachineSpec(name="web-1", demo=True)
        >>> root = nixslave.build_root(spec, progress=steps.append)
        >>> steps[0]
        'building the demo system for web-1'
    """

    def __call__(self, message: str, /) -> None: ...

