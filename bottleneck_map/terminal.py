"""Output that reads in any terminal and in a pipe: command help and tables.

Help uses click's plain layout (typer's ``rich_markup_mode=None``): option names
are never shortened, long ones put their help on the next line, and it wraps at
the terminal's width (``COLUMNS`` in a pipe, 80 when unset). :class:`HelpCommand`
and :class:`HelpGroup` add what typer's plain layout lacks: click-style metavars
(``TEXT``, ``INTEGER``, ``[text|json|html]``, none for flags), arguments named in
capitals, and command summaries that are never cut.

Tables are rich tables, which fill the console's width (the terminal's, or
``COLUMNS``, or 80 in a pipe) and cut a cell with "…" when they do not fit.
:class:`Fit` renders the first of several layouts of a table that fits the width
it is given, so a narrow console gets a narrower layout instead of cut cells.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from typer.core import TyperCommand, TyperGroup

_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "bool": "BOOLEAN"}


def metavar(type_label: str) -> str:
    """Click's name for a typer type label: ``<int>`` -> ``INTEGER``, ``<a|b>`` -> ``[a|b]``."""
    label = type_label.strip("<>")
    if label.startswith("list[") and label.endswith("]"):
        label = label[5:-1]
    if "|" in label:
        return f"[{label}]"
    return _TYPE_NAMES.get(label, label.upper())


def _argument_name(param: Any) -> str:
    name = param.metavar
    if param.nargs != 1:
        name += "..."
    return name if param.required else f"[{name}]"


class _Formatter(TyperCommand.context_class.formatter_class):
    """Click's help formatter, except that help text never breaks inside a hyphenated word
    (``--num-kv-blocks`` stays whole when it is mentioned in another option's help)."""

    def write_dl(self, rows: Sequence[tuple[str, str]], col_max: int = 30, col_spacing: int = 2) -> None:
        rows = list(rows)
        first_col = min(max((len(first) for first, _ in rows), default=0), col_max) + col_spacing
        indent = " " * self.current_indent
        for first, second in rows:
            self.write(indent + first)
            if not second:
                self.write("\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n" + indent + " " * first_col)
            width = max(self.width - first_col - self.current_indent, 10)
            lines = textwrap.wrap(second, width, break_on_hyphens=False, break_long_words=False) or [""]
            self.write(lines[0] + "\n")
            for line in lines[1:]:
                self.write(indent + " " * first_col + line + "\n")


class _Context(TyperCommand.context_class):
    formatter_class = _Formatter


class HelpCommand(TyperCommand):
    """A typer command whose plain help names values the way click does."""

    context_class = _Context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:  # "Missing argument 'BUNDLE'", as the usage line names it
            if param.param_type_name == "argument" and param.metavar is None and param.name:
                param.metavar = param.name.upper()

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                pieces.append(_argument_name(param))
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args, opts = [], []
        for param in self.get_params(ctx):
            typed = getattr(param, "display_type", None)  # typer >= 0.29 names types "<int>"; older ones as click
            if param.param_type_name == "option" and param.metavar is None and not param.is_flag and typed:
                param.metavar = metavar(typed(ctx))
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                args.append((_argument_name(param).strip("[]"), record[1]))
            else:
                opts.append(record)
        for title, rows in (("Arguments", args), ("Options", opts)):
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)


class HelpGroup(TyperGroup):
    """The command group: each command's summary is its whole first sentence, wrapped, never cut."""

    context_class = _Context

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def use_plain_help(app: Any) -> None:
    """Give every command registered on ``app`` so far the plain help of :class:`HelpCommand`."""
    for info in app.registered_commands:
        if info.cls in (None, TyperCommand):
            info.cls = HelpCommand


class Fit:
    """The first layout whose natural width fits the console's width; the last one otherwise.

    Each layout is a function that builds a renderable (a rich ``Table``), called when
    the output is rendered, so the choice follows the width of the console it is printed on.
    """

    def __init__(self, layouts: Sequence[Callable[[], RenderableType]]) -> None:
        if not layouts:
            raise ValueError("Fit needs at least one layout")
        self.layouts = list(layouts)

    def choose(self, console: Console, options: ConsoleOptions) -> RenderableType:
        wide = options.update(max_width=10_000, width=10_000)
        for build in self.layouts[:-1]:
            table = build()
            if Measurement.get(console, wide, table).maximum <= options.max_width:
                return table
        return self.layouts[-1]()

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.choose(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.choose(console, options))


__all__ = ["Fit", "HelpCommand", "HelpGroup", "metavar", "use_plain_help"]
