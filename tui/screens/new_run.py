"""New run: pick a profile, edit it field by field (checked as you type), see the memory plan, save or launch.

The form is generated from the profile dataclasses, so every field the CLI
knows is here with the CLI's own validation messages.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Checkbox, Footer, Header, Input, Label, Select, Static

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.home import user_profiles_dir
from qlora_tui.core.names import NAME_RULE, is_valid_name
from qlora_tui.core.profile.files import checked_data_path, load_profile, save_profile
from qlora_tui.core.profile.schema import SECTIONS, Profile
from qlora_tui.core.profile.shipped import list_profiles
from qlora_tui.core.profile.validate import check_profile_name, parse_field_text, profile_from_dict
from qlora_tui.runner.launch import start_run
from qlora_tui.tui.keys import Command
from qlora_tui.tui.screens.dialogs import AskText, Confirm
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.widgets.plan_text import compact_plan

TOP_FIELDS = ("name", "description")
PLAN_DELAY_S = 0.4  # the plan waits for a pause in typing: a half-typed model id never starts a Hub lookup


def field_id(section: str, key: str) -> str:
    return f"field-{section}-{key}"


def text_of(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value)
    return "" if value is None else str(value)


def free_profile_name(home: Path, name: str) -> str:
    """`name`, or NAME-2, NAME-3...: the first that is neither a shipped profile nor one of the user's."""
    taken = {path.stem for _origin, path in list_profiles(home)}
    candidate, n = name, 1
    while candidate in taken:
        n += 1
        candidate = f"{name}-{n}"
    return candidate


class NewRunScreen(ShowsWorkerErrors, Screen[None]):
    CSS_PATH = "new_run.tcss"
    # under 80 columns the labels and the plan shrink; from 110 the plan widens rather than the fields
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (80, "-wide"), (110, "-wider")]
    BINDINGS = [
        Command("ctrl+s", "save", "Save", title='Save as profile', help='Write the form to a profile file'),
        Command("ctrl+l", "launch", "Launch", title='Launch run', help='Start this profile in the background'),
        Command("ctrl+o", "preview_data", "Preview",
                title='Preview the data', help='First rows after the chat template, what trains, pre-flight counts'),
        Command("ctrl+r", "enqueue", "Queue", title='Queue run', help='Start this profile after the queued runs'),
        Binding("g", "card_size", "Card GB", show=False),  # the plan names it; the footer fits 80 columns
    ]

    class PlanReady(Message):
        def __init__(self, text: str, fits: bool | None, request: int) -> None:
            super().__init__()
            self.text, self.fits, self.request = text, fits, request

    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[tuple[str, Path]] = []
        self.profile: Profile | None = None
        self.errors: dict[str, str] = {}
        self.card_gb: float | None = None
        self._loading = False
        self._loaded_from = ""
        self.plan_request = 0  # only the newest request's plan is shown (older workers may finish later)
        self._plan_timer: Timer | None = None
        self._pending_plan: Callable[[], None] | None = None  # what the timer will do, unless a field is left first

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="new-run"):
            with VerticalScroll(id="profile-form"):
                with Horizontal(classes="field-row", id="profile-select-row"):
                    yield Label("start from", classes="field-label")
                    yield Select[str]([], prompt="choose a profile", id="profile-select")
                yield Vertical(id="fields")
            with Vertical(id="plan-box"):
                yield Label("Memory plan", classes="section-title")
                yield Static("choose a profile", id="plan")
                yield Static("", id="form-status")
                yield Static("", id="field-help")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.refresh_profiles()
        self.query_one("#profile-select", Select).focus()

    def refresh_profiles(self, select: str | None = None) -> None:
        self.profiles = list_profiles(self.app.home)  # type: ignore[attr-defined]
        options = [(path.stem if origin == "shipped" else f"{path.stem} (yours)", str(path))
                   for origin, path in self.profiles]
        widget = self.query_one("#profile-select", Select)
        widget.set_options(options)
        if select is not None:
            widget.value = select

    # ------------------------------------------------------------ form

    @on(Select.Changed, "#profile-select")
    async def profile_chosen(self, event: Select.Changed) -> None:
        if event.value is Select.NULL or self.profile is not None and str(event.value) == self._loaded_from:
            return
        self._loaded_from = str(event.value)
        try:
            profile = load_profile(Path(str(event.value)))
        except UserFacingError as err:
            self.notify(err.message, severity="error", timeout=10)
            return
        await self.load(profile)

    async def load(self, profile: Profile) -> None:
        """Rebuild the form for `profile` (the old fields are gone before the new ones, which reuse their ids)."""
        self.profile = profile
        self.errors.clear()
        self._loading = True
        form = self.query_one("#fields", Vertical)
        await form.remove_children()
        widgets: list[Widget] = []
        for key in TOP_FIELDS:
            widgets += self._field("top", key, getattr(profile, key), {"kind": "str", "help": key})
        for section, cls in SECTIONS.items():
            widgets.append(Label(f"[{section}]", classes="form-section", id=f"title-{section}", markup=False))
            for f in dataclasses.fields(cls):
                value = getattr(getattr(profile, section), f.name)
                widgets += self._field(section, f.name, value, dict(f.metadata))
        await form.mount_all(widgets)
        self.call_after_refresh(self._loaded)

    def _loaded(self) -> None:
        self._loading = False
        self._loaded_from = ""
        self.show_method_options()
        self.update_plan()

    def _field(self, section: str, key: str, value: Any, meta: dict[str, Any]) -> list[Widget]:
        """One line per field (label, then the input), and an error line shown only when the value is bad."""
        fid = field_id(section, key)
        kind = meta["kind"]
        if kind == "bool":
            widget: Widget = Checkbox("", value=bool(value), id=fid)
        elif kind in ("choice", "bits"):
            choices = [(str(c), c) for c in meta["choices"]]
            widget = Select(choices, value=value, allow_blank=False, id=fid)
        else:
            widget = Input(text_of(value), id=fid)
        widget.tooltip = meta.get("help", "")
        row = Horizontal(Label(key, classes="field-label"), widget, classes="field-row", id=f"{fid}-row")
        error = Static("", classes="field-error", id=f"{fid}-error")
        error.display = False
        return [row, error]

    def _set_error(self, section: str, key: str, message: str | None) -> None:
        fid = field_id(section, key)
        error = self.query_one(f"#{fid}-error", Static)
        if message:
            self.errors[fid] = message
            error.update(message)
        else:
            self.errors.pop(fid, None)
        error.display = bool(message)

    def _apply(self, widget_id: str | None, value: Any) -> None:
        if self._loading or not widget_id or not widget_id.startswith("field-") or self.profile is None:
            return
        _, section, key = widget_id.split("-", 2)
        try:
            if section == "top":
                checked = check_profile_name(value) if key == "name" else value
                setattr(self.profile, key, checked)
            else:
                checked = parse_field_text(section, key, value) if isinstance(value, str) else value
                if (section, key) == ("data", "path"):  # as the run will read it: from here, not its folder
                    checked = checked_data_path(checked, Path.cwd())
                    if checked != value.strip():
                        self.query_one("#field-help", Static).update(f"[b]data.path[/b] reads {checked}")
                setattr(getattr(self.profile, section), key, checked)
        except UserFacingError as err:
            self._set_error(section, key, err.message)
            self.update_plan()  # the status line must stop saying "valid"
            return
        self._set_error(section, key, None)
        if (section, key) == ("train", "method"):
            self.show_method_options()
        self.update_plan()

    @on(Input.Changed)
    def input_changed(self, event: Input.Changed) -> None:
        self._apply(event.input.id, event.value)

    @on(Select.Changed)
    def select_changed(self, event: Select.Changed) -> None:
        self._apply(event.select.id, event.value)

    @on(Checkbox.Changed)
    def checkbox_changed(self, event: Checkbox.Changed) -> None:
        self._apply(event.checkbox.id, event.value)

    def on_descendant_focus(self, event: Any) -> None:
        widget = event.widget
        if widget.id and widget.id.startswith("field-"):
            _, section, key = widget.id.split("-", 2)
            path = key if section == "top" else f"{section}.{key}"
            self.query_one("#field-help", Static).update(f"[b]{path}[/b]: {widget.tooltip or ''}")

    def show_method_options(self) -> None:
        """Only the [method] options the chosen method uses (the CLI refuses the others)."""
        if self.profile is None:
            return
        method = self.profile.train.method
        used = [f.name for f in dataclasses.fields(SECTIONS["method"]) if method in f.metadata.get("methods", ())]
        for f in dataclasses.fields(SECTIONS["method"]):
            fid = field_id("method", f.name)
            self.query_one(f"#{fid}-row").display = f.name in used
            self.query_one(f"#{fid}-error").display = f.name in used and fid in self.errors
        self.query_one("#title-method").display = bool(used)

    # ------------------------------------------------------------ the whole profile

    def current_profile(self) -> Profile:
        """The form as a profile, validated as a whole (cross-field rules included)."""
        if self.profile is None:
            raise UserFacingError("pick a profile first")
        if self.errors:
            raise UserFacingError("fix the fields marked in red first: " + "; ".join(self.errors.values()))
        profile = copy.deepcopy(self.profile)
        method = profile.train.method
        profile.method_keys = tuple(f.name for f in dataclasses.fields(SECTIONS["method"])
                                    if method in f.metadata.get("methods", ()))
        checked = profile_from_dict(profile.to_dict(), source="form")
        checked.data.path = checked_data_path(checked.data.path, Path.cwd())
        return checked

    def update_plan(self) -> None:
        """Check the whole form now; plan its memory once typing pauses, and show only the newest plan."""
        status = self.query_one("#form-status", Static)
        self.plan_request += 1
        if self._plan_timer is not None:
            self._plan_timer.stop()
        try:
            profile = self.current_profile()
        except UserFacingError as err:
            status.update(f"[red]{err.message}[/red]")
            return
        status.update("[green]profile is valid[/green]")
        request, card_gb = self.plan_request, self.card_gb
        width = self.query_one("#plan", Static).size.width or 30

        def plan() -> None:
            self._pending_plan = None
            self.estimate(profile, card_gb, request, width)

        self._pending_plan = plan
        self._plan_timer = self.set_timer(PLAN_DELAY_S, plan)

    @on(Input.Blurred)
    def field_left(self) -> None:
        """Leaving a field plans at once: the pause in typing only waits for a value to be whole."""
        if self._pending_plan is not None:
            if self._plan_timer is not None:
                self._plan_timer.stop()
            self._pending_plan()

    @work(thread=True, group="estimate", exit_on_error=False)
    def estimate(self, profile: Profile, card_gb: float | None, request: int, width: int = 30) -> None:
        from qlora_tui.runner.estimate.memory import estimate_profile

        try:
            plan = estimate_profile(profile, self.app.home, gpu_gb=card_gb)  # type: ignore[attr-defined]
            self.post_message(self.PlanReady(compact_plan(plan, width), plan.fits, request))
        except UserFacingError as err:
            self.post_message(self.PlanReady(f"no memory plan: {err.message}", None, request))

    def on_new_run_screen_plan_ready(self, message: PlanReady) -> None:
        if message.request == self.plan_request:  # a slower, older request (a Hub lookup) must not paint over it
            self.query_one("#plan", Static).update(message.text)

    # ------------------------------------------------------------ actions

    def action_card_size(self) -> None:
        def chosen(value: str | None) -> None:
            if value is None:
                return
            try:
                self.card_gb = float(value) if value.strip() else None
            except ValueError:
                self.notify(f"card size: a number of GB, got {value!r}", severity="error")
                return
            self.update_plan()

        self.app.push_screen(AskText("Card size in GB for the memory plan (empty: the detected GPU)",
                                     str(self.card_gb or "")), chosen)

    def action_save(self) -> None:
        try:
            profile = self.current_profile()
        except UserFacingError as err:
            self.notify(err.message, severity="error", timeout=10)
            return

        def write(path: Path) -> None:
            save_profile(profile, path, header=f"{path.stem}: saved from qlora-tui's New run screen.")
            self.notify(f"saved {path}; `qlora-tui run {path.stem}` uses it")
            self._loaded_from = str(path)  # the form already shows it: selecting it must not reload
            self.refresh_profiles(select=str(path))

        def chosen(name: str | None) -> None:
            if not name or not name.strip():
                return
            stem = Path(name.strip()).stem
            if not is_valid_name(stem):
                self.notify(f"profile name: use {NAME_RULE}; got {stem!r}", severity="error", timeout=10)
                return
            home: Path = self.app.home  # type: ignore[attr-defined]
            if any(origin == "shipped" and p.stem == stem for origin, p in list_profiles(home)):
                self.notify(f"{stem} is a shipped profile, and `qlora-tui run {stem}` would keep running the "
                            "shipped one: save under another name", severity="error", timeout=10)
                return
            path = user_profiles_dir(home) / f"{stem}.toml"
            if path.exists():
                self.app.push_screen(Confirm(f"Your profile {stem} exists ({path}). Overwrite it?"),
                                     lambda yes: write(path) if yes else None)
            else:
                write(path)

        self.app.push_screen(AskText("Save as profile (a name for your profiles folder)",
                                     free_profile_name(self.app.home, profile.name)), chosen)  # type: ignore[attr-defined]

    def action_preview_data(self) -> None:
        from qlora_tui.tui.screens.data_preview import DataPreviewScreen

        try:
            profile = self.current_profile()
        except UserFacingError as err:
            self.notify(err.message, severity="error", timeout=10)
            return
        self.app.push_screen(DataPreviewScreen(profile))

    def action_launch(self) -> None:
        try:
            profile = self.current_profile()
            run, _proc = start_run(self.app.home, profile, detach=True)  # type: ignore[attr-defined]
        except UserFacingError as err:
            self.notify(err.message, severity="error", timeout=10)
            return
        self.notify(f"launched {run.run_id} in the background")
        self.app.open_monitor(run)  # type: ignore[attr-defined]

    def action_enqueue(self) -> None:
        from qlora_tui.runner.queue.runner import enqueue

        try:
            (entry,), _pid = enqueue(self.app.home, [(self.current_profile(), "the New run form")])  # type: ignore[attr-defined]
        except UserFacingError as err:
            self.notify(err.message, severity="error", timeout=10)
            return
        self.notify(f"queued {entry.profile_name} ({entry.id}): it starts after the runs before it; 5 shows the queue")
