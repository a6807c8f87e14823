"""The progress bar in a real terminal (tmux): one line that fits the terminal's width, redrawn in
place, following a resize, with the queue states of the jobs in flight; also under mpirun, whose
ranks write to a pipe. Read back with `tmux capture-pane`."""

import os
import shlex
import shutil
import subprocess
import time

import harness
from harness import TempDirTestCase, make_job, sweep_cmd


class Terminal(TempDirTestCase):
    def setUp(self):
        super().setUp()
        harness.require_binaries(self)
        self.assertIsNotNone(shutil.which("tmux"), "tmux is missing: scripts/setup.sh installs it")
        self.lines = harness.varied_prompts(40, seed=51)
        self.job_path, self.job = make_job(self.dir, self.lines,
                                           batch={"target_mb": 32, "max_prompts": 2, "max_tokens": 32768,
                                                  "sort_by_length": True})
        self.server = self.start_server("--layers", "4", "--hidden", "32", "--latency-ms", 1000, "--workers", 2)
        self.socket = f"ndif-test-{os.getpid()}-{id(self)}"
        self.addCleanup(lambda: subprocess.run(self.tmux("kill-server"), capture_output=True))

    def tmux(self, *args):
        return ["tmux", "-L", self.socket, "-f", "/dev/null"] + [str(a) for a in args]

    def pane(self):
        return subprocess.run(self.tmux("capture-pane", "-p", "-t", "t"), capture_output=True, text=True,
                              check=True).stdout.splitlines()

    def screen_and_cursor_line(self):
        """The pane and the line under its cursor, read by one tmux command so that no output lands
        between the two."""
        out = subprocess.run(self.tmux("display-message", "-p", "-t", "t", "#{cursor_y}", ";",
                                       "capture-pane", "-p", "-t", "t"),
                             capture_output=True, text=True, check=True).stdout.splitlines()
        y, lines = int(out[0]), out[1:]
        return lines, (lines[y] if y < len(lines) else "")

    def run_in_terminal(self, ranks, width=120):
        command = sweep_cmd("run", self.job_path, "--endpoint", self.server.url, ranks=ranks)
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in harness.base_env().items() if k.isidentifier())
        script = f"export {env}; {shlex.join(command)}; echo EXIT=$?; sleep 600"
        subprocess.run(self.tmux("new-session", "-d", "-s", "t", "-x", width, "-y", 40, "bash", "-c", script),
                       check=True)

    def watch(self, width, resize_to=None, timeout=120):
        """Captures the pane until the run ends; checks every screen; returns the bars seen."""
        bars, resized_bars, resized = [], [], False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen, current = self.screen_and_cursor_line()
            text = "\n".join(screen)
            columns = resize_to if resized else width
            # Only the final summary may start with "batches" (wrapped, on a narrow terminal).
            progress_lines = [l for i, l in enumerate(screen) if l.startswith("batches ") and "->" not in l
                              and not (i + 1 < len(screen) and "->" in screen[i + 1])]
            self.assertEqual(progress_lines, [], "plain progress lines instead of a bar:\n" + text)
            if current.startswith("["):
                self.assertLess(len(current), columns, f"{current!r} on the screen\n{text}")
                (resized_bars if resized else bars).append(current)
            if "EXIT=" in text:
                return bars, resized_bars, text
            if resize_to and not resized and len(bars) >= 3:
                subprocess.run(self.tmux("resize-window", "-t", "t", "-x", resize_to), check=True)
                resized = True
            time.sleep(0.15)
        self.fail("the run did not end:\n" + "\n".join(self.pane()))

    def check_run(self, ranks):
        self.run_in_terminal(ranks)
        bars, resized_bars, text = self.watch(120, resize_to=64)
        self.assertIn("EXIT=0", text)
        self.assertIn("-> complete", text)
        self.assertGreaterEqual(len(bars), 3, text)
        # The bar is one line redrawn in place: no screen ever held two.
        self.assertTrue(any(s in bar for bar in bars for s in ("RECEIVED", "QUEUED", "RUNNING")), bars)
        self.assertTrue(any("ETA " in bar for bar in bars), bars)
        self.assertTrue(resized_bars, "no redraw after the resize:\n" + text)
        self.assertTrue(all(len(bar) < 64 for bar in resized_bars), resized_bars)

    def test_the_bar_of_one_process_fits_and_follows_a_resize(self):
        self.check_run(None)

    def test_the_bar_under_mpirun_fits_and_follows_a_resize(self):
        self.check_run(2)


if __name__ == "__main__":
    harness.main()
