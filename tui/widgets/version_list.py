"""The versions a person picks from (Compare, Eval): filled from the registry without undoing what was picked.

The list is read in a worker and may arrive after the first keys: refilling it
with the same versions changes nothing, and a changed list keeps the picks and
the highlighted row, so `space, down, space` picks two versions whenever the
list arrives.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.widgets import SelectionList
from textual.widgets.selection_list import Selection

from qlora_tui.registry.records import AdapterVersion


@dataclass(frozen=True)
class VersionChoice:
    """One row of the list: what it says, its ref, and whether it can be picked (shown either way, saying why)."""

    label: str
    ref: str
    pickable: bool = True
    source: str = ""  # for a merged model: the adapter it was merged from


def compare_choices(versions: list[AdapterVersion]) -> list[VersionChoice]:
    """Newest first: adapters and reward models (they score the answers); then merged models, which cannot be picked."""
    choices = []
    for version in reversed(versions):
        if version.kind == "adapter":
            choices.append(VersionChoice(f"{version.ref}  {version.method}  {version.base_model}", version.ref))
        elif version.kind == "reward":
            choices.append(VersionChoice(f"{version.ref}  reward model: scores the answers", version.ref))
        elif version.kind == "merged":
            source = version.parent_ref or "its adapter"
            choices.append(VersionChoice(f"{version.ref}  merged", version.ref, pickable=False, source=source))
    return [c for c in choices if c.pickable] + [c for c in choices if not c.pickable]


def unpickable_note(choices: list[VersionChoice]) -> str:
    """Why the greyed-out rows cannot be picked, and what to pick instead."""
    merged = [c for c in choices if not c.pickable]
    if not merged:
        return ""
    pairs = ", ".join(f"{c.ref}: {c.source}" for c in merged)
    return f"merged models answer as their adapters do: pick those ({pairs})"


def refill(selection: SelectionList[str], choices: list[VersionChoice], pick: set[str] = frozenset(),
           highlight: str | None = None) -> None:
    """Show `choices`, picking `pick` too; a list that already shows them is left alone (keys may be under way).

    The highlight stays on its version (or goes to `highlight`), so the next space picks what the person sees.
    """
    shown = [(str(selection.get_option_at_index(i).prompt), selection.get_option_at_index(i).value)
             for i in range(selection.option_count)]
    picked = set(selection.selected) | pick
    if shown == [(c.label, c.ref) for c in choices]:
        for ref in pick - set(selection.selected):
            if any(c.ref == ref and c.pickable for c in choices):
                selection.select(ref)
    else:
        was_on = None
        if selection.highlighted is not None and selection.highlighted < selection.option_count:
            was_on = selection.get_option_at_index(selection.highlighted).value
        selection.clear_options()
        selection.add_options([Selection(c.label, c.ref, c.ref in picked and c.pickable, disabled=not c.pickable)
                               for c in choices])
        highlight = highlight or was_on
    refs = [c.ref for c in choices]
    if highlight in refs:
        selection.highlighted = refs.index(highlight)
    elif selection.highlighted is None and choices:
        selection.highlighted = 0  # space picks without an arrow key first
