"""New run: pick a profile, edit it field by field (checked as you type), see the memory plan, save or launch.

The form is generated from the profile dataclasses, so every field the CLI
knows is here with the CLI's own validation messages.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Checkbox, Footer, Header, Input, Label, Select, Static

from qlora_tui.core.errors import UserFacingError
from qlora_tui.core.home import user_profiles_dir
from qlora_tui.runner.errors import QloraError
from qlora_tui.runner.launch import start_run
from qlora_tui.runner.profile import (
    SECTIONS,
    Profile,
    check_profile_name,
    load_profile,
    parse_field_text,
    profile_from_dict,
    save_profile,
)
from qlora_tui.runner.shipped import list_profiles
from qlora_tui.tui.screens.dialogs import AskText
from qlora_tui.tui.screens.failures import ShowsWorkerErrors

TOP_FIELDS = ("name", "description")


def field_id(section: str, key: str) -> str:
    return f"field-{section}-{key}"


def text_of(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(value)
    return "" if value is None else str(value)


SHORT_NAMES = {"activations, not checkpointed": "activations", "activations, checkpointed": "activations (ckpt)",
               "CUDA context and kernels": "CUDA context", "base: embeddings, head, norms": "base: embed/head/norms",
               "reward model (second base)": "reward model"}


def compact_plan(plan: Any) -> str:
    """The estimator's plan in a 30-column box: counted components, total, and the verdict."""
    params = plan.total_params
    count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M" if params >= 1e6 else f"{params:,}"
    lines = [f"{plan.model_id}", f"{count} params, {plan.quantization}", ""]
    for component in plan.components:
        if component.counted and component.gb >= 0.005:
            name = SHORT_NAMES.get(component.name, component.name)
            lines.append(f"{name[:22]:<22} {component.gb:6.2f}")
    lines.append(f"{'total (GB)':<22} {plan.total_gb:6.2f}")
    if plan.fits is None:
        lines.append("\nno GPU detected: press g for a card size")
    elif plan.fits:
        lines.append(f"\n[green]fits a {plan.gpu_gb:.0f} GB card, {plan.spare_gb:.1f} GB spare[/green]")
    else:
        lines.append(f"\n[red]does not fit a {plan.gpu_gb:.0f} GB card[/red]")
    gc = "on" if plan.gradient_checkpointing else "off"
    lines.append(f"gradient checkpointing {gc}; {plan.total_gb_other_checkpointing:.1f} GB if "
                 f"{'off' if gc == 'on' else 'on'}")
    return "\n".join(lines)


class NewRunScreen(ShowsWorkerErrors, Screen[None]):
    BINDINGS = [
        Binding("ctrl+s", "save", "Save profile"),
        Binding("ctrl+l", "launch", "Launch"),
        Binding("ctrl+o", "enqueue", "Queue"),
        Binding("g", "card_size", "Card GB"),
    ]
    PALETTE = [("Save as profile", "Write the form to a profile file (ctrl+s)", "action_save"),
               ("Launch run", "Start this profile in the background (ctrl+l)", "action_launch"),
               ("Queue run", "Start this profile after the queued runs (ctrl+o)", "action_enqueue")]

    class PlanReady(Message):
        def __init__(self, text: str, fits: bool | None) -> None:
            super().__init__()
            self.text, self.fits = text, fits

    def __init__(self) -> None:
        super().__init__()
        self.profiles: list[tuple[str, Path]] = []
        self.profile: Profile | None = None
        self.errors: dict[str, str] = {}
        self.card_gb: float | None = None
        self._loading = False
        self._loaded_from = ""

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="new-run"):
            with VerticalScroll(id="profile-form"):
                with Horizontal(classes="field-row"):
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
        if event.value is Select.BLANK or self.profile is not None and str(event.value) == self._loaded_from:
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
            raise QloraError("pick a profile first")
        if self.errors:
            raise QloraError("fix the fields marked in red first: " + "; ".join(self.errors.values()))
        profile = copy.deepcopy(self.profile)
        method = profile.train.method
        profile.method_keys = tuple(f.name for f in dataclasses.fields(SECTIONS["method"])
                                    if method in f.metadata.get("methods", ()))
        checked = profile_from_dict(profile.to_dict(), source="form")
        return checked

    def update_plan(self) -> None:
        status = self.query_one("#form-status", Static)
        try:
            profile = self.current_profile()
        except UserFacingError as err:
            status.update(f"[red]{err.message}[/red]")
            return
        status.update("[green]profile is valid[/green]")
        self.estimate(profile, self.card_gb)

    @work(thread=True, exclusive=True, group="estimate", exit_on_error=False)
    def estimate(self, profile: Profile, card_gb: float | None) -> None:
        from qlora_tui.runner.estimate import estimate_profile

        try:
            plan = estimate_profile(profile, self.app.home, gpu_gb=card_gb)  # type: ignore[attr-defined]
            self.post_message(self.PlanReady(compact_plan(plan), plan.fits))
        except UserFacingError as err:
            self.post_message(self.PlanReady(f"no memory plan: {err.message}", None))

    def on_new_run_screen_plan_ready(self, message: PlanReady) -> None:
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

        def chosen(name: str | None) -> None:
            if not name:
                return
            path = user_profiles_dir(self.app.home) / f"{Path(name).stem}.toml"  # type: ignore[attr-defined]
            save_profile(profile, path, header=f"{path.stem}: saved from qlora-tui's New run screen.")
            self.notify(f"saved {path}")
            self._loaded_from = str(path)  # the form already shows it: selecting it must not reload
            self.refresh_profiles(select=str(path))

        self.app.push_screen(AskText("Save as profile (file name in your profiles folder)", profile.name), chosen)

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
        from qlora_tui.runner.queuerunner import enqueue

        try:
            (entry,), _pid = enqueue(self.app.home, [(self.current_profile(), "the New run form")])  # type: ignore[attr-defined]
        except UserFacingError as err:
            self.notify(err.message, severity="error", timeout=10)
            return
        self.notify(f"queued {entry.profile_name} ({entry.id}): it starts after the runs before it; 5 shows the queue")
