"""The netconf error family.

netconf is used on its own by other tools, so it cannot import nixslave's
error classes; it carries the same duck-typed attributes (``where``, ``what``,
``hint`` and ``layer``) so that the nixslave CLI still prints one line for it.

The parts often quote the input (node names, file names, values), and the
input may be hostile: a name with a newline would split the one-line error,
an escape sequence would reach the user's terminal, and a megabyte-long name
would bury the message. So every part is made one printable, bounded line
whenever it is set, including when a caller prefixes ``where`` later.
"""

from __future__ import annotations

MAX_PART = 400  # characters kept of each of where, what and hint


def one_line(text: object, limit: int = MAX_PART) -> str:
    """``text`` as one printable line: whitespace runs become one space,
    other control characters are escaped, and the middle of an over-long
    text is elided (its start and end name the place best)."""
    out: list[str] = []
    for ch in str(text):
        if ch.isspace():
            if out and out[-1] != " ":
                out.append(" ")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    s = "".join(out).strip()
    if len(s) > limit:
        keep = (limit - 1) // 2
        s = f"{s[:keep]}…{s[-keep:]}"
    return s


class NetconfError(Exception):
    """Base of every error netconf raises on purpose.

    Carries ``where``, ``what`` and ``hint`` like nixslave's own errors
    (``nixslave.NixslaveError``), each one printable line however hostile
    the input it quotes.

    Example:

        >>> try:
        ...     netconf.plan(netconf.load_topology("lab.yml"))
        ... except netconf.NetconfError as exc:
        ...     print(exc.where, exc.what, exc.hint, sep=" | ")
    """

    layer = "netconf"

    def __init__(self, what: str, *, where: str = "", hint: str = "") -> None:
        super().__init__(one_line(what))
        self.what = what
        self.where = where
        self.hint = hint

    @property
    def what(self) -> str:
        return self._what

    @what.setter
    def what(self, value: str) -> None:
        self._what = one_line(value)

    @property
    def where(self) -> str:
        return self._where

    @where.setter
    def where(self, value: str) -> None:
        self._where = one_line(value)

    @property
    def hint(self) -> str:
        return self._hint

    @hint.setter
    def hint(self, value: str) -> None:
        self._hint = one_line(value)

    def __str__(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head} (hint: {self.hint})" if self.hint else head


class TopologyError(NetconfError):
    """The topology description is invalid or cannot be planned.

    Example:

        >>> netconf.plan(netconf.topology_from_data({"name": "lab", "links": [["a", "b"]]}))
        Traceback (most recent call last):
        nixslave.netconf.errors.TopologyError: links[0].endpoints[0]: unknown node or segment 'a'...
    """


class WiringError(NetconfError):
    """A plan cannot be wired onto a backend (socket path too long, ...).

    Example:

        >>> try:
        ...     nixslave.run_artifacts(arts, plan=p, rundir=Path("/a/very/long/path"))
        ... except netconf.WiringError as exc:
        ...     print(exc.hint)
    """
