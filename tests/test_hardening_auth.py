"""Item 11 of issue 13: the token file is refused, the way ssh refuses a readable key, when it
is a symlink, not a regular file, someone else's, or readable by group or others."""

from __future__ import annotations

import os

import pytest

from daemon.web import auth
from daemon.web.auth import InsecureTokenFile


def test_a_new_token_file_is_0600_in_a_0700_dir_and_read_back(tmp_path):
    tok = auth.load_or_create_token(tmp_path / "state" / "token")
    assert (tmp_path / "state" / "token").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert auth.load_or_create_token(tmp_path / "state" / "token") == tok
    assert auth.read_token(tmp_path / "state" / "token") == tok


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_readable_by_others_is_refused_naming_chmod(tmp_path, mode):
    p = tmp_path / "token"
    p.write_text("s3cret\n")
    p.chmod(mode)
    for fn in (auth.load_or_create_token, auth.read_token):
        with pytest.raises(InsecureTokenFile, match=f"chmod 600 {p}"):
            fn(p)


def test_a_symlink_to_a_public_file_is_refused_not_used_as_the_token(tmp_path):
    public = tmp_path / "hostname"
    public.write_text("myhost\n")
    public.chmod(0o600)  # even a private target: a link is not our token file
    link = tmp_path / "token"
    link.symlink_to(public)
    with pytest.raises(InsecureTokenFile, match="symlink") as e:
        auth.load_or_create_token(link)
    assert "rm " in str(e.value)
    assert public.read_text() == "myhost\n" and link.is_symlink()  # nothing overwritten


def test_a_fifo_or_directory_is_refused(tmp_path):
    d = tmp_path / "token"
    d.mkdir(mode=0o700)
    with pytest.raises(InsecureTokenFile, match="not a regular file"):
        auth.load_or_create_token(d)
    f = tmp_path / "fifo"
    os.mkfifo(f, 0o600)
    with pytest.raises(InsecureTokenFile, match="not a regular file"):
        auth.load_or_create_token(f)  # and no hang: opened O_NONBLOCK


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_a_token_file_owned_by_another_user_is_refused(tmp_path):
    p = tmp_path / "token"
    p.write_text("s3cret\n")
    p.chmod(0o600)
    os.chown(p, 65534, 65534)
    with pytest.raises(InsecureTokenFile, match="belongs to uid 65534"):
        auth.load_or_create_token(p)
    assert auth.read_token(p) == "s3cret"  # root's CLI may read the daemon user's token
