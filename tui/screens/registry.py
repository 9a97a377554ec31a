"""The Registry screen: adapters grouped by name, a version's details, and Merge / Compare / Push / Delete.

Merge runs in a child process (it needs torch); push, delete and verify are
light and run in worker threads. The store is opened only in workers, never on
the UI thread (a read may wait behind another process's write). Workers only
post messages; the handlers here change what is shown.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, ProgressBar, Static, Tree
from textual.widgets.tree import TreeNode
from textual.worker import Worker

from qlora_tui.registry.errors import RegistryError
from qlora_tui.registry.records import AdapterVersion
from qlora_tui.registry.store import Store, open_store
from qlora_tui.tui.jobs import WorkerJob
from qlora_tui.tui.keys import Command
from qlora_tui.tui.screens.dialogs import AskMerge, AskPush, Confirm, MergeOptions, PushOptions
from qlora_tui.tui.screens.failures import ShowsWorkerErrors
from qlora_tui.tui.screens.on_show import ReadsOnShow
from qlora_tui.tui.widgets.version_details import details_text

# Up to this many versions every adapter's group starts open; beyond, only the one on show (the others open with
# enter): the tree lays out and measures every open row before it paints one.
OPEN_ALL_UP_TO = 200
JOB_STATUS_S = 15.0  # how long a finished job's line stays under the details (its toast stays 10 s)


def merge_args(ref: str, options: MergeOptions) -> list[str]:
    return ["merge", ref, "--out", options.out_dir, "--dtype", options.dtype, "--base-weights",
            options.base_weights] + (["--force"] if options.force else [])


def group_name(node: TreeNode[str]) -> str:
    """The adapter name of a group's row ("demo  (3)" -> "demo"; a name has no spaces)."""
    return str(node.label).rsplit("  (", 1)[0]


def put_cursor_on(tree: Tree[str], node: TreeNode[str]) -> None:
    """Move the cursor to `node` now, with the tree's lines numbered first.

    Tree numbers its lines lazily; moving to a node not yet numbered (line -1) put the cursor on the first row.
    """
    if tree.last_line >= 0:  # reading last_line numbers the lines
        tree.move_cursor(node)


class RegistryScreen(ReadsOnShow, ShowsWorkerErrors, Screen[None]):
    CSS_PATH = "registry.tcss"
    BINDINGS = [
        Command("m", "merge", "Merge", title='Merge version', help='Merge the selected version into its base'),
        Command("c", "compare", "Compare", title='Compare version', help='Compare the selected version with its base'),
        Command("p", "push", "Push", title='Push version', help='Push the selected version to the Hub'),
        Command("d", "delete", "Delete", title='Delete version', help='Delete the selected version'),
        Command("v", "verify", "Verify", title='Verify version', help="Re-hash the selected version's files"),
    ]

    class Loaded(Message):
        def __init__(self, versions: list[AdapterVersion]) -> None:
            super().__init__()
            self.versions = versions

    class DetailsLoaded(Message):
        def __init__(self, ref: str, details: Text) -> None:
            super().__init__()
            self.ref, self.details = ref, details

    class DeleteChecked(Message):
        def __init__(self, ref: str, children: list[str]) -> None:
            super().__init__()
            self.ref, self.children = ref, children

    class JobProgress(Message):
        def __init__(self, message: str, fraction: float | None) -> None:
            super().__init__()
            self.message, self.fraction = message, fraction

    class JobFinished(Message):
        def __init__(self, ok: bool, message: str) -> None:
            super().__init__()
            self.ok, self.message = ok, message

    def __init__(self) -> None:
        super().__init__()
        self.versions: dict[str, AdapterVersion] = {}
        self.busy = False
        self.status_timer: Timer | None = None  # clears a finished job's line, which would stay for good
        self.opened_names: set[str] = set()  # adapters the user opened (enter) or closed: kept so on reload
        self.closed_names: set[str] = set()

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="registry"):
            with Vertical(id="adapter-tree-box"):
                yield Static("Adapters", classes="section-title")
                yield Tree("registry", id="adapter-tree")
            with Vertical(id="details-box"):
                yield VerticalScroll(Static("", id="details"), id="details-scroll")
                yield Static("", id="job-status")
                yield ProgressBar(total=1.0, show_eta=False, id="job-progress")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.query_one(ProgressBar).display = False
        self.query_one(Tree).show_root = False

    def read_on_show(self) -> None:
        self.reload()

    def open_store(self) -> Store:
        """For worker threads only: opening may wait on the index while another process writes it."""
        return open_store(self.app.home)  # type: ignore[attr-defined]

    @work(thread=True, exclusive=True, group="registry-load", exit_on_error=False)
    def reload(self) -> None:
        self.post_message(self.Loaded(self.open_store().list_versions(with_files=False)))

    def on_registry_screen_loaded(self, message: Loaded) -> None:
        tree = self.query_one(Tree)
        selected = self.selected_ref()
        self.versions = {v.ref: v for v in message.versions}
        groups: dict[str, list[AdapterVersion]] = {}
        for version in message.versions:
            groups.setdefault(version.name, []).append(version)
        target = self.versions.get(selected or "") or next(iter(self.versions.values()), None)
        if len(message.versions) <= OPEN_ALL_UP_TO:
            shown = set(groups) - self.closed_names
        else:  # a big registry: the adapter on show and those opened before (with enter, or shown)
            shown = self.opened_names | ({target.name} if target else set())
            self.opened_names = set(shown)
        if target is not None:
            shown.add(target.name)
        tree.clear()
        leaves: dict[str, TreeNode[str]] = {}
        for name, versions in groups.items():  # Text labels: a str is read as markup, and "[best]" vanished
            group = tree.root.add(Text(f"{name}  ({len(versions)})"), expand=name in shown)
            for version in versions:
                label = f"@{version.number}  {version.kind}  {version.method}"
                if version.aliases:
                    label += f"  [{', '.join(version.aliases)}]"
                leaves[version.ref] = group.add_leaf(Text(label), data=version.ref)
        if target is None:
            self.query_one("#details", Static).update("No adapters yet: a finished run registers its adapter.")
            return
        tree.focus()
        put_cursor_on(tree, leaves[target.ref])

    def on_tree_node_expanded(self, event: Tree.NodeExpanded[str]) -> None:
        if event.node.data is None:  # an adapter's name: it stays open when the view reloads
            self.opened_names.add(group_name(event.node))
            self.closed_names.discard(group_name(event.node))

    def on_tree_node_collapsed(self, event: Tree.NodeCollapsed[str]) -> None:
        if event.node.data is None:
            self.closed_names.add(group_name(event.node))
            self.opened_names.discard(group_name(event.node))

    def selected_ref(self) -> str | None:
        node = self.query_one(Tree).cursor_node
        return node.data if node is not None and isinstance(node.data, str) else None

    def on_tree_node_highlighted(self, event: Tree.NodeHighlighted[Any]) -> None:
        if isinstance(event.node.data, str):
            self.show_details(event.node.data)

    @work(thread=True, exclusive=True, group="registry-details", exit_on_error=False)
    def show_details(self, ref: str) -> None:
        """The version's record and lineage, read in a worker; only the newest choice is shown."""
        store = self.open_store()
        try:
            version = store.get(ref)
            details = details_text(version, [v.ref for v in store.lineage(ref)])
        except RegistryError as err:
            details = Text(err.message, style="red")
        self.post_message(self.DetailsLoaded(ref, details))

    def on_registry_screen_details_loaded(self, message: DetailsLoaded) -> None:
        if message.ref == self.selected_ref():  # the cursor may have moved on meanwhile
            self.query_one("#details", Static).update(message.details)

    def _need_selection(self) -> str | None:
        ref = self.selected_ref()
        if ref is None:
            self.notify("choose a version first (up/down in the tree)", severity="warning")
        elif self.busy:
            self.notify("another registry job is running", severity="warning")
            return None
        return ref

    # ------------------------------------------------------------ jobs

    def worker_failed(self, worker: Worker[object]) -> None:
        super().worker_failed(worker)
        if worker.group == "registry-job":
            self.busy = False
            self.query_one(ProgressBar).display = False
            self.query_one("#job-status", Static).update("")

    def on_registry_screen_job_progress(self, message: JobProgress) -> None:
        if self.status_timer is not None:
            self.status_timer.stop()
        self.query_one("#job-status", Static).update(message.message)
        bar = self.query_one(ProgressBar)
        bar.display = message.fraction is not None
        if message.fraction is not None:
            bar.update(progress=message.fraction)

    def on_registry_screen_job_finished(self, message: JobFinished) -> None:
        self.busy = False
        self.query_one(ProgressBar).display = False
        status = self.query_one("#job-status", Static)
        status.update(Text(message.message, style="green" if message.ok else "red"))
        self.notify(message.message, severity="information" if message.ok else "error", timeout=10)
        if self.status_timer is not None:
            self.status_timer.stop()
        if message.ok:  # a failure stays until the next job: it may need reading twice
            self.status_timer = self.set_timer(JOB_STATUS_S, lambda: status.update(""))
        self.reload()

    def action_merge(self) -> None:
        ref = self._need_selection()
        if ref is None:
            return
        default_out = str(self.app.home / "merged" / ref.replace("@", "-"))  # type: ignore[attr-defined]

        def chosen(options: MergeOptions | None) -> None:
            if options is not None:
                self.busy = True
                job = WorkerJob(self.app.home, merge_args(ref, options),  # type: ignore[attr-defined]
                                what=f"merge of {ref}", leave_on_quit=True)
                self.app.add_job(job)  # type: ignore[attr-defined]
                self.merge(ref, job)

        self.app.push_screen(AskMerge(ref, default_out), chosen)

    @work(thread=True, exclusive=True, group="registry-job", exit_on_error=False)
    def merge(self, ref: str, job: WorkerJob) -> None:
        self.post_message(self.JobProgress(f"merging {ref} (a child process)...", 0.0))
        outcome: dict[str, Any] = {}

        def emit(line: dict[str, Any]) -> None:
            if line.get("type") == "progress":
                self.post_message(self.JobProgress(str(line.get("message", "")), line.get("fraction")))
            elif line.get("type") in ("result", "error"):
                outcome.update(line)

        if job.run(emit) is None:
            return  # the app is quitting and left the merge running
        if outcome.get("type") == "result":
            fidelity = outcome.get("fidelity") or {}
            check = (f"; fidelity: top-1 agreement {fidelity['top1_agreement']:.3f}, max KL {fidelity['max_kl']:.2e}"
                     if fidelity else "")
            self.post_message(self.JobFinished(
                True, f"merged {ref} into {outcome.get('out_dir')}, registered as {outcome.get('ref')}{check}"))
        else:
            hint = f" ({outcome['hint']})" if outcome.get("hint") else ""
            self.post_message(self.JobFinished(False, f"merge failed: {outcome.get('message')}{hint}"))

    def action_compare(self) -> None:
        ref = self.selected_ref()
        if ref is None:
            self.notify("choose a version first", severity="warning")
            return
        self.app.compare_refs([ref])  # type: ignore[attr-defined]

    def action_push(self) -> None:
        ref = self._need_selection()
        if ref is None:
            return

        def chosen(options: PushOptions | None) -> None:
            if options is not None:
                self.busy = True
                self.push(ref, options)

        self.app.push_screen(AskPush(ref), chosen)

    @work(thread=True, exclusive=True, group="registry-job", exit_on_error=False)
    def push(self, ref: str, options: PushOptions) -> None:
        from qlora_tui.registry.push import push_version

        self.post_message(self.JobProgress(f"pushing {ref} to {options.repo}...", None))
        try:
            record = push_version(self.open_store(), ref, options.repo, private=options.private,
                                  merged=options.merged)
        except RegistryError as err:
            hint = f" ({err.hint})" if err.hint else ""
            self.post_message(self.JobFinished(False, f"push failed: {err.message}{hint}"))
            return
        self.post_message(self.JobFinished(True, f"pushed {ref} to {record.url} (commit {record.commit_id[:12]})"))

    def action_delete(self) -> None:
        ref = self._need_selection()
        if ref is not None:
            self.check_delete(ref)

    @work(thread=True, exclusive=True, group="registry-details", exit_on_error=False)
    def check_delete(self, ref: str) -> None:
        """The versions derived from `ref`, which the question must name before anything is deleted."""
        self.post_message(self.DeleteChecked(ref, [c.ref for c in self.open_store().children(ref)]))

    def on_registry_screen_delete_checked(self, message: DeleteChecked) -> None:
        ref, children = message.ref, message.children
        question = f"Delete {ref}? Its files are removed from the registry."
        if len(children) == 1:
            question += (f"\n{children[0]} derives from it: it keeps working, and its lineage will say that {ref} "
                         "was deleted.")
        elif children:
            question += (f"\n{', '.join(children)} derive from it: they keep working, and their lineage will say "
                         f"that {ref} was deleted.")

        def answered(yes: bool | None) -> None:
            if yes:
                self.busy = True
                self.delete(ref, with_children=bool(children))

        self.app.push_screen(Confirm(question), answered)

    @work(thread=True, exclusive=True, group="registry-job", exit_on_error=False)
    def delete(self, ref: str, with_children: bool) -> None:
        try:
            _version, children = self.open_store().delete(ref, force=with_children)
        except RegistryError as err:
            self.post_message(self.JobFinished(False, f"not deleted: {err.message}"))
            return
        kept = f"; {', '.join(children)} kept" if children else ""
        self.post_message(self.JobFinished(True, f"deleted {ref}{kept}"))

    def action_verify(self) -> None:
        ref = self._need_selection()
        if ref is not None:
            self.busy = True
            self.verify(ref)

    @work(thread=True, exclusive=True, group="registry-job", exit_on_error=False)
    def verify(self, ref: str) -> None:
        from qlora_tui.registry.integrity import verify

        try:
            (report,) = verify(self.open_store(), ref)
        except RegistryError as err:
            self.post_message(self.JobFinished(False, f"verify failed: {err.message}"))
            return
        problems = getattr(report, "problems", [])
        if problems:
            names = ", ".join(f"{p.path} ({p.problem})" for p in problems)
            self.post_message(self.JobFinished(False, f"{ref}: {len(problems)} file(s) differ: {names}"))
        else:
            self.post_message(self.JobFinished(True, f"{ref}: every file matches its sha256"))
