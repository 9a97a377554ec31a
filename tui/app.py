"""The Textual app: four screens (runs, new run, registry, compare) over one data home.

Built by make_app(home) so tests run it over a temporary data home. The app
never imports torch: training, merges and generation run in child processes
that it watches through files and pipes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import Input

from qlora_tui.runner.rundir import RunDir
from qlora_tui.tui.keys import palette_commands
from qlora_tui.tui.screens.help import HelpScreen
from qlora_tui.tui.screens.quit import AskQuit, ChildJob, QuitChoice, let_go
from qlora_tui.tui.screens.runs import RunsScreen
from qlora_tui.tui.settings import load_settings, save_setting

if TYPE_CHECKING:
    from qlora_tui.core.device import Gpus
    from qlora_tui.tui.first_frame import PreloadedRuns

THEMES = ("textual-dark", "textual-light")
# Keys that type into a text box while it has the focus: the footer leaves them out then, and offers escape
TYPED_KEYS = {"help", "quit", "switch_mode"}


# The screens not on show at start are imported when first opened: the first paint waits for less.

def new_run_screen() -> Screen[None]:
    from qlora_tui.tui.screens.new_run import NewRunScreen

    return NewRunScreen()


def registry_screen() -> Screen[None]:
    from qlora_tui.tui.screens.registry import RegistryScreen

    return RegistryScreen()


def queue_screen() -> Screen[None]:
    from qlora_tui.tui.screens.queue import QueueScreen

    return QueueScreen()


def compare_screen() -> Screen[None]:
    from qlora_tui.tui.screens.compare import CompareScreen

    return CompareScreen()


def eval_screen() -> Screen[None]:
    from qlora_tui.tui.screens.eval import EvalScreen

    return EvalScreen()


def is_text_box(widget: object) -> bool:
    """An Input or a TextArea; TextArea's module loads only once a screen uses one, and this check keeps it so."""
    text_area = sys.modules.get("textual.widgets._text_area")
    return isinstance(widget, Input) or (text_area is not None and isinstance(widget, text_area.TextArea))


class QloraApp(App[None]):
    TITLE = "qlora-tui"
    CSS_PATH = "app.tcss"
    MODES = {"runs": RunsScreen, "new": new_run_screen, "registry": registry_screen, "compare": compare_screen,
             "queue": queue_screen,
             "eval": eval_screen}
    DEFAULT_MODE = "runs"
    # In footer order. Every screen's footer fits 80 columns: the six view keys are one item ("1-6 Views"), and
    # the theme key is in the help and the palette only.
    BINDINGS = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
        Binding("1", "switch_mode('runs')", "Views", key_display="1-6"),
        Binding("2", "switch_mode('new')", "New run", show=False),
        Binding("3", "switch_mode('registry')", "Registry", show=False),
        Binding("4", "switch_mode('compare')", "Compare", show=False),
        Binding("5", "switch_mode('queue')", "Queue", show=False),
        Binding("6", "switch_mode('eval')", "Eval", show=False),
        Binding("t", "toggle_theme", "Theme", show=False),
        Binding("escape", "leave_field", "Leave field"),
    ]

    def __init__(self, home: Path, preloaded: PreloadedRuns | None = None) -> None:
        super().__init__()
        self.home = home
        self.preloaded = preloaded  # the runs the launcher's first frame read, for the Runs screen to take over
        self._gpus: Gpus | None = None
        theme = load_settings(home).get("theme")
        self.theme = theme if isinstance(theme, str) and theme in self.available_themes else THEMES[0]
        self.sub_title = str(home)
        self.jobs: list[ChildJob] = []  # child processes the screens started (merges, the compare worker)

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self.remember_theme)
        self.call_after_refresh(self.restart_queue)

    @property
    def gpus(self) -> Gpus:
        """The GPU reader, made when a monitor first needs it (NVML loads on first use)."""
        if self._gpus is None:
            from qlora_tui.core.device import Gpus

            self._gpus = Gpus()
        return self._gpus

    def take_preloaded_runs(self) -> PreloadedRuns | None:
        preloaded, self.preloaded = self.preloaded, None
        return preloaded

    def remember_theme(self, theme: Theme) -> None:
        """The theme chosen (with t or the palette's picker) is the one the next start opens with."""
        if load_settings(self.home).get("theme") != theme.name:
            save_setting(self.home, "theme", theme.name)

    # ------------------------------------------------------------ actions shared by screens

    def open_monitor(self, run: RunDir) -> None:
        """The run's monitor right above the Runs table, so escape always leads back to Runs."""
        from qlora_tui.tui.screens.monitor import MonitorScreen

        if self.current_mode != "runs":
            self.switch_mode("runs")
        while len(self.screen_stack) > 1:  # an earlier monitor (or anything else) left open in the runs view
            self.pop_screen()
        self.push_screen(MonitorScreen(run, self.gpus))

    def stop_run(self, run: RunDir) -> None:
        if not run.is_running():
            self.notify(f"{run.run_id} is not running", severity="warning")
            return
        run.request_stop()
        self.notify(f"asked {run.run_id} to stop: it checkpoints at the end of its current step "
                    "(a run still starting stops between its start-up stages)")

    def resume_run(self, run: RunDir) -> None:
        """Resume if runner.resume_rule allows it (the CLI's rule), saying first what it will do.

        Starting again at step 0 when steps were done asks first; a refusal is raised for the caller to show.
        """
        from qlora_tui.runner.resume_rule import plan_resume
        from qlora_tui.tui.screens.dialogs import Confirm

        plan = plan_resume(run)

        def start(yes: bool | None = True) -> None:
            from qlora_tui.core.errors import UserFacingError
            from qlora_tui.runner.launch import resume_run

            if not yes:
                return
            try:
                resume_run(run)
            except UserFacingError as err:
                self.notify(err.message, severity="error")
                return
            self.notify(f"resuming {run.run_id} in the background: {plan.describe()}")

        if plan.checkpoint is None and plan.reached > 0:
            self.push_screen(Confirm(f"{run.run_id}: {plan.describe()}. Start it again?"), start)
        else:
            start()

    def compare_refs(self, refs: list[str]) -> None:
        from qlora_tui.tui.screens.compare import CompareScreen

        self.switch_mode("compare")
        screen = self.screen
        if isinstance(screen, CompareScreen):
            screen.choose(refs)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """While a text box has the focus it takes the letter and number keys: the footer offers "leave field"
        then, and leaves out the keys that would only type."""
        if action == "leave_field":
            return is_text_box(self.focused)
        if action in TYPED_KEYS:
            return not is_text_box(self.focused)
        return True

    def action_leave_field(self) -> None:
        """Take the focus out of a text box, so the screen keys (1-4, ?, q...) work again; tab goes back in."""
        self.set_focus(None)

    def add_job(self, job: ChildJob) -> None:
        """Keep a child the app started in mind, so quitting can name it (and forget the finished ones)."""
        self.jobs = [j for j in self.jobs if j.active] + [job]

    @work(thread=True, exit_on_error=False)
    def restart_queue(self) -> None:
        """Runs left waiting in the queue (after a reboot, say) start again once the app is open."""
        from qlora_tui.runner.queue.entries import waiting
        from qlora_tui.runner.queue.runner import spawn_queue_runner

        count = len(waiting(self.home))
        pid = spawn_queue_runner(self.home) if count else None
        if pid is not None:
            self.call_from_thread(self.notify, f"the run queue had no runner: started one (pid {pid}) for "
                                  f"{count} waiting run(s); 5 shows the queue")

    async def action_quit(self) -> None:
        """Quit at once; with children at work, first say what runs and whether to leave or stop it."""
        active = [job for job in self.jobs if job.active]
        if isinstance(self.screen, AskQuit):
            return
        if not active:
            self.exit()
            return

        def answered(choice: QuitChoice | None) -> None:
            if choice is not None:
                let_go(active, choice)
                self.exit()

        self.push_screen(AskQuit(active), answered)

    def on_unmount(self) -> None:
        """However the app ends, its threads let go of the children, so the exit never waits for one."""
        let_go(self.jobs, "leave")  # idle ones too: the compare worker waits on its stdin for as long as it is open

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_toggle_theme(self) -> None:
        self.theme = THEMES[(THEMES.index(self.theme) + 1) % len(THEMES)] if self.theme in THEMES else THEMES[0]

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        # Textual's "Keys" panel would stand beside our Help (?), which lists the keys of every screen
        yield from (command for command in super().get_system_commands(screen) if command.title != "Keys")
        yield SystemCommand("Runs", "All runs with their status (1)", lambda: self.switch_mode("runs"))
        yield SystemCommand("New run", "Set up and launch a run from a profile (2)", lambda: self.switch_mode("new"))
        yield SystemCommand("Registry", "Adapters and their versions (3)", lambda: self.switch_mode("registry"))
        yield SystemCommand("Compare", "Base and adapters answer one prompt side by side (4)",
                            lambda: self.switch_mode("compare"))
        yield SystemCommand("Queue", "Runs waiting to start one after another (5)", lambda: self.switch_mode("queue"))
        yield SystemCommand("Eval", "Prompt sets over versions: pass rates and answers side by side (6)",
                            lambda: self.switch_mode("eval"))
        yield SystemCommand("Help", "Keys of every screen (?)", self.action_help)
        yield SystemCommand("Toggle dark/light theme", "Switch between the dark and the light theme (t)",
                            self.action_toggle_theme)
        for title, help_text, callback in palette_commands(screen):
            yield SystemCommand(title, help_text, callback)

def make_app(home: Path, preloaded: PreloadedRuns | None = None) -> QloraApp:
    return QloraApp(home, preloaded)
