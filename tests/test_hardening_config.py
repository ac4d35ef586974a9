"""Items 10, 11 (public config) and 13 of issue 13: a corpus of bad configs through the real
`nightshift check-config`: each exits 78 naming the key (or the file's problem), no traceback;
the config lookup and the state dir under systemd; secrets never in the stored config."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.state import config as config_mod
from daemon.state.config import ConfigError
from tests.helpers import ROOT

GOOD = '[job]\ncommand = ["python", "-m", "trainer.reference"]\n'

# (name, file contents (str or bytes), text the error must contain)
CORPUS: list[tuple[str, str | bytes, str]] = [
    ("binary", b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)), "NUL byte"),
    ("latin1", GOOD.encode() + b'[api]\nhost = "caf\xe9"\n', "not UTF-8"),
    ("nul in command", GOOD.replace('"trainer.reference"', '"trainer\\u0000.reference"'),
     "job.command"),
    ("port too big", GOOD + "[api]\nport = 70000\n", "api.port"),
    ("port negative", GOOD + "[api]\nport = -5\n", "api.port"),
    ("port zero", GOOD + "[api]\nport = 0\n", "api.port"),
    ("nan pause", GOOD + "[thermal]\npause_at_c = nan\n", "thermal.pause_at_c"),
    ("inf timeout", GOOD + "[offload]\ntimeout_s = inf\n", "offload.timeout_s"),
    ("negative heartbeat", GOOD.replace("]\n", "]\nheartbeat_timeout_s = -1\n", 1),
     "job.heartbeat_timeout_s"),
    ("zero heartbeat", GOOD.replace("]\n", "]\nheartbeat_timeout_s = 0\n", 1),
     "job.heartbeat_timeout_s"),
    ("negative budget", GOOD + "[offload]\nbudget_usd = -3\n", "offload.budget_usd"),
    ("negative backoff", GOOD.replace("]\n", "]\nrestart_backoff_s = -1\n", 1),
     "job.restart_backoff_s"),
    ("pause below resume", GOOD + "[thermal]\npause_at_c = 70\nresume_at_c = 75\n",
     "thermal.resume_at_c"),
    ("pause equals resume", GOOD + "[thermal]\npause_at_c = 75\nresume_at_c = 75\n",
     "thermal.resume_at_c"),
    ("nan in price table", GOOD + "[offload]\nprices_usd_per_h = { A100-40GB = nan }\n",
     "offload.prices_usd_per_h"),
    ("bad timezone", GOOD + '[schedule]\ntimezone = "Mars/Olympus"\n', "schedule.timezone"),
    ("path timezone", GOOD + '[schedule]\ntimezone = "../../etc/passwd"\n', "schedule.timezone"),
    ("mistyped gpu", GOOD + '[offload]\nbackend = "modal"\ngpu = "A100-40G"\n', "offload.gpu"),
    ("poll interval zero", GOOD + "[gpu]\npoll_interval_s = 0\n", "gpu.poll_interval_s"),
    ("huge integer", GOOD + "[checkpoint]\nkeep = " + "9" * 5000 + "\n", "TOML"),
    ("beyond 2**53", GOOD + "[checkpoint]\nkeep = 9007199254740993\n", "checkpoint.keep"),
    ("deep nesting", GOOD + "[api]\nhost = " + "[" * 3000 + "]" * 3000 + "\n", "TOML"),
    ("tiny log cap", GOOD.replace("]\n", "]\nlog_max_bytes = 10\n", 1), "job.log_max_bytes"),
    ("ssh port", GOOD + "[offload.ssh]\nport = 0\n", "offload.ssh.port"),
    ("window 1", GOOD + "[divergence]\nwindow = 1\n", "divergence.window"),
    ("not toml", "this is = = not toml\n", "not valid TOML"),
    ("huge file", "# " + "x" * (2 << 20) + "\n", "MiB"),
]


def _run_all(tmp_path: Path, files: list[Path]) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-m", "daemon.cli", "check-config", "-c", str(f)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for f in files]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


@pytest.mark.slow
def test_bad_config_corpus_exits_78_naming_key_and_file_without_traceback(tmp_path):
    files = []
    for i, (_, body, _) in enumerate(CORPUS):
        f = tmp_path / f"bad{i}.toml"
        f.write_bytes(body if isinstance(body, bytes) else body.encode())
        files.append(f)
    results = _run_all(tmp_path, files)
    failures = []
    for (name, _, needle), f, r in zip(CORPUS, files, results, strict=True):
        ok = (r.returncode == 78 and needle in r.stderr and str(f) in r.stderr
              and "Traceback" not in r.stderr and len(r.stderr.splitlines()) == 1)
        if not ok:
            failures.append(f"{name}: rc={r.returncode} stderr={r.stderr[-300:]!r}")
    assert not failures, "\n".join(failures)


def test_good_config_and_boundaries_still_pass(tmp_path):
    f = tmp_path / "ok.toml"
    f.write_text(GOOD + '[api]\nport = 65535\n[thermal]\npause_at_c = 75.5\nresume_at_c = 75\n'
                 '[schedule]\ntimezone = "Europe/Berlin"\n[offload]\nbackend = "modal"\n'
                 'gpu = "H100"\nbudget_usd = 0\n')
    cfg = config_mod.load(f)
    assert cfg["api"]["port"] == 65535 and cfg["job"]["log_max_bytes"] == 50 * 2**20
    assert (ROOT / "config.toml").exists() and config_mod.load(ROOT / "config.toml")


def test_live_reload_gets_the_same_checks(tmp_path):
    """configwatch reloads through config.load: a nan written live is rejected like at start."""
    f = tmp_path / "c.toml"
    f.write_text(GOOD + "[thermal]\npause_at_c = nan\n")
    with pytest.raises(ConfigError, match="thermal.pause_at_c"):
        config_mod.load(f)


def test_state_directory_precedence(tmp_path):
    base = tmp_path / "etc"
    env = {"STATE_DIRECTORY": "/var/lib/nightshift"}
    assert config_mod.state_dir_for("state", base, env) == Path("/var/lib/nightshift")
    assert config_mod.state_dir_for("/srv/state", base, env) == Path("/srv/state")
    assert config_mod.state_dir_for("state", base, {}) == base / "state"


def test_system_install_config_in_etc_puts_state_in_state_directory(tmp_path, monkeypatch):
    """The issue's crash loop: /etc/nightshift/config.toml with state_dir = "state" resolved to
    /etc/nightshift/state, read-only under ProtectSystem=strict."""
    etc = tmp_path / "etc-nightshift"
    etc.mkdir()
    (etc / "config.toml").write_text((ROOT / "config.toml").read_text())
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "var-lib"))
    cfg = config_mod.load(etc / "config.toml")
    assert cfg["daemon"]["state_dir"] == str(tmp_path / "var-lib")
    assert cfg["api"]["token_file"] == str(tmp_path / "var-lib" / "token")


def test_config_lookup_includes_configuration_directory_and_xdg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no ./config.toml here
    monkeypatch.delenv("NIGHTSHIFT_CONFIG", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    home = tmp_path / "home"
    (home / ".config" / "nightshift").mkdir(parents=True)
    (home / ".config" / "nightshift" / "config.toml").write_text(GOOD)
    monkeypatch.setenv("HOME", str(home))
    assert config_mod.find_config() == home / ".config" / "nightshift" / "config.toml"
    xdg = tmp_path / "xdg"
    (xdg / "nightshift").mkdir(parents=True)
    (xdg / "nightshift" / "config.toml").write_text(GOOD)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert config_mod.find_config() == xdg / "nightshift" / "config.toml"
    confdir = tmp_path / "confdir"
    confdir.mkdir()
    (confdir / "config.toml").write_text(GOOD)
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(confdir))
    assert config_mod.find_config() == confdir / "config.toml"


@pytest.mark.slow
def test_cli_status_from_home_finds_the_user_config(tmp_path):
    """`nightshift status` from $HOME with the user service's config: not exit 78."""
    home = tmp_path / "home"
    (home / ".config" / "nightshift").mkdir(parents=True)
    (home / ".config" / "nightshift" / "config.toml").write_text(
        GOOD + f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[api]\nport = 1\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "daemon.cli", "status"], cwd=home, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 78 and "configuration" not in r.stderr, r.stderr


def test_public_config_redacts_env_values_notify_urls_and_ssh_key_paths(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text(GOOD.replace("]\n", ']\nenv = { HF_TOKEN = "hf_secret123" }\n', 1)
                 + '[notify]\nntfy_url = "https://ntfy.sh/secret-topic"\n'
                 '[offload]\nlocal_env = { API_KEY = "sk-local" }\n'
                 '[offload.ssh]\nhost = "box"\nkey_file = "/home/u/.ssh/id_secret"\n'
                 'env = { WANDB_API_KEY = "wandb-secret" }\n')
    pub = config_mod.public_config(config_mod.load(f))
    text = repr(pub)
    for secret in ("hf_secret123", "secret-topic", "sk-local", "id_secret", "wandb-secret"):
        assert secret not in text, secret
    assert pub["job"]["env"] == {"HF_TOKEN": "<redacted>"}
    assert pub["offload"]["ssh"]["host"] == "box"  # not a secret: kept
    assert "_path" not in pub
