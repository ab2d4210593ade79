"""How `parley chat` reads input and shows replies: simple, rich (markdown), programmatic (scripts)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown


class ChatStyle:
    """Base: plain terminal I/O. `read_message` returns None at end of input."""

    def __init__(self, multiline: bool = False, stdin: TextIO | None = None, stdout: TextIO | None = None):
        self.multiline = multiline
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout

    def _readline(self, prompt: str) -> str | None:
        if prompt:
            self.stdout.write(prompt)
            self.stdout.flush()
        line = self.stdin.readline()
        return None if line == "" else line.rstrip("\n")

    def read_message(self, role: str) -> str | None:
        first = self._readline(f"{role}: ")
        if first is None or not self.multiline:
            return first
        lines = [first]  # multiline: a blank line sends the message
        while lines[-1] != "":
            line = self._readline("")
            if line is None:
                break
            lines.append(line)
        return "\n".join(lines).strip("\n")

    def show_reply(self, role: str, pieces: Iterator[str]) -> str:
        self.stdout.write(f"{role}: ")
        out = []
        for piece in pieces:
            out.append(piece)
            self.stdout.write(piece)
            self.stdout.flush()
        self.stdout.write("\n")
        return "".join(out)

    def info(self, text: str) -> None:
        self.stdout.write(text + "\n")
        self.stdout.flush()

    def error(self, text: str) -> None:
        sys.stderr.write(f"error: {text}\n")
        sys.stderr.flush()


class RichStyle(ChatStyle):
    """Replies rendered as markdown (code highlighted) while they stream."""

    def __init__(self, multiline: bool = False):
        super().__init__(multiline)
        self.console = Console()

    def _readline(self, prompt: str) -> str | None:
        try:
            return self.console.input(f"[bold green]{prompt}[/]" if prompt else "")
        except EOFError:
            return None

    def show_reply(self, role: str, pieces: Iterator[str]) -> str:
        self.console.print(f"[bold blue]{role}:[/]")
        out: list[str] = []
        with Live(Markdown(""), console=self.console, refresh_per_second=8, vertical_overflow="visible") as live:
            for piece in pieces:
                out.append(piece)
                live.update(Markdown("".join(out)))
        return "".join(out)

    def info(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/]")


class ProgrammaticStyle(ChatStyle):
    """For scripts: one message per input line (a blank line ends one with --multiline);
    each complete reply is written to stdout, followed by a newline; no prompts, no decoration."""

    def read_message(self, role: str) -> str | None:
        return super().read_message("") if self.multiline else self._readline("")

    def _readline(self, prompt: str) -> str | None:
        return super()._readline("")

    def show_reply(self, role: str, pieces: Iterator[str]) -> str:
        text = "".join(pieces)
        self.stdout.write(text + "\n")
        self.stdout.flush()
        return text

    def info(self, text: str) -> None:
        sys.stderr.write(text + "\n")


STYLES = {"simple": ChatStyle, "rich": RichStyle, "programmatic": ProgrammaticStyle}
