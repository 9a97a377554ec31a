"""The Textual app: four screens (runs, new run, registry, compare) over one data home.

Built by make_app(home) so tests run it over a temporary data home. The app
never imports torch: training, merges and generation run in child processes
that it watches through files and pipes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Input, TextArea

from qlora_tui.core.device import Gpus
from qlora_tui.runner.errors import QloraError
from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.screens.help import HelpScreen
from qlora_tui.tui.screens.runs import RunsScreen

THEMES = ("textual-dark", "textual-light")
# One footer item for the four screen keys ("1234 Views"), so each screen's own keys fit 80 columns
SCREEN_KEYS = Binding.Group("Views", compact=True)


# The screens not on show at start are imported when first opened: the first paint waits for less.

def new_run_screen() -> Screen[None]:
    from qlora_tui.tui.screens.new_run import NewRunScreen

    return NewRunScreen()


def registry_screen() -> Screen[None]:
    from qlora_tui.tui.screens.registry import RegistryScreen

    return RegistryScreen()


def compare_screen() -> Screen[None]:
    from qlora_tui.tui.screens.compare import CompareScreen

    return CompareScreen()


def eval_screen() -> Screen[None]:
    from qlora_tui.tui.screens.eval import EvalScreen

    return EvalScreen()


class QloraApp(App[None]):
    TITLE = "qlora-tui"
    CSS_PATH = "app.tcss"
    MODES = {"runs": RunsScreen, "new": new_run_screen, "registry": registry_screen, "compare": compare_screen,
             "eval": eval_screen}
    DEFAULT_MODE = "runs"
    BINDINGS = [  # in footer order: at 80 columns the last ones are cut first (help and the palette list all)
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("1", "switch_mode('runs')", "Runs", group=SCREEN_KEYS),
        Binding("2", "switch_mode('new')", "New run", group=SCREEN_KEYS),
        Binding("3", "switch_mode('registry')", "Registry", group=SCREEN_KEYS),
        Binding("4", "switch_mode('compare')", "Compare", group=SCREEN_KEYS),
        Binding("5", "switch_mode('eval')", "Eval", group=SCREEN_KEYS),
        Binding("t", "toggle_theme", "Theme"),
        Binding("escape", "leave_field", "Leave field"),
    ]

    def __init__(self, home: Path) -> None:
        super().__init__()
        self.home = home
        self.gpus = Gpus()
        self.theme = THEMES[0]
        self.sub_title = str(home)

    # ------------------------------------------------------------ actions shared by screens

    def open_monitor(self, run: RunDir) -> None:
        from qlora_tui.tui.screens.monitor import MonitorScreen

        if self.current_mode != "runs":
            self.switch_mode("runs")
        self.push_screen(MonitorScreen(run, self.gpus))

    def stop_run(self, run: RunDir) -> None:
        if not run.is_running():
            self.notify(f"{run.run_id} is not running", severity="warning")
            return
        run.request_stop()
        self.notify(f"asked {run.run_id} to stop: it checkpoints at the end of its current step")

    def resume_run(self, run: RunDir) -> None:
        from qlora_tui.runner.launch import resume_run

        if run.is_running():
            raise QloraError(f"{run.run_id} is already running")
        resume_run(run)
        self.notify(f"resumed {run.run_id} in the background")

    def compare_refs(self, refs: list[str]) -> None:
        from qlora_tui.tui.screens.compare import CompareScreen

        self.switch_mode("compare")
        screen = self.screen
        if isinstance(screen, CompareScreen):
            screen.choose(refs)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer "leave field" only while a text box has the focus (it takes the letter and number keys)."""
        if action == "leave_field":
            return isinstance(self.focused, (Input, TextArea))
        return True

    def action_leave_field(self) -> None:
        """Take the focus out of a text box, so the screen keys (1-4, ?, q...) work again; tab goes back in."""
        self.set_focus(None)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[(THEMES.index(self.theme) + 1) % len(THEMES)] if self.theme in THEMES else THEMES[0]

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Runs", "All runs with their status (1)", lambda: self.switch_mode("runs"))
        yield SystemCommand("New run", "Set up and launch a run from a profile (2)", lambda: self.switch_mode("new"))
        yield SystemCommand("Registry", "Adapters and their versions (3)", lambda: self.switch_mode("registry"))
        yield SystemCommand("Compare", "Base and adapters answer one prompt side by side (4)",
                            lambda: self.switch_mode("compare"))
        yield SystemCommand("Eval", "Prompt sets over versions: pass rates and answers side by side (5)",
                            lambda: self.switch_mode("eval"))
        yield SystemCommand("Help", "Keys of every screen (?)", self.action_help)
        yield SystemCommand("Toggle dark/light theme", "Switch between the dark and the light theme (t)",
                            self.action_toggle_theme)
        for action in getattr(screen, "PALETTE", ()):
            title, help_text, method = action
            yield SystemCommand(title, help_text, getattr(screen, method))


def make_app(home: Path) -> QloraApp:
    return QloraApp(home)
