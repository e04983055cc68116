"""No credentials in the repository: every file git tracks is scanned for the usual patterns.

A line that must hold a look-alike (an example in documentation, say) can carry the marker
`pragma: allowlist secret`.
"""

from __future__ import annotations

import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALLOW = "pragma: allowlist secret"
MAX_BYTES = 5_000_000  # larger tracked files (data) are not scanned

# name -> pattern. The secret key pattern wants a 40-character value, so that a reference such as
# `${{ secrets.AWS_SECRET_ACCESS_KEY }}` or `$AWS_SECRET_ACCESS_KEY` is not taken for one.
PATTERNS = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(
        r"(?i)\b(?:aws_)?secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
    "private key": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "password": re.compile(r"(?i)\bpassword\s*=\s*['\"][^'\"\s]+"),
}


def find_secrets(path: str, name: str | None = None) -> list[str]:
    """'name:line: kind' for each line of the file at `path` that looks like a credential."""
    name = name or path
    try:
        if os.path.getsize(path) > MAX_BYTES:
            return []
        with open(path, "rb") as handle:
            data = handle.read()
    except (FileNotFoundError, IsADirectoryError):
        return []  # tracked but deleted in the work tree, or a submodule
    if b"\0" in data[:8192]:
        return []  # binary
    findings = []
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if ALLOW in line:
            continue
        findings += [f"{name}:{number}: {kind}" for kind, pattern in PATTERNS.items()
                     if pattern.search(line)]
    return findings


def tracked_files() -> list[str]:
    try:
        listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, check=True,
                                 capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.fail(f"`git ls-files` failed in {ROOT}; the secret scan needs the git checkout: {error}")
    return [name for name in listing.decode().split("\0") if name]


def test_no_credentials_in_tracked_files():
    files = tracked_files()
    assert files, "git tracks no file?"
    findings = [finding for name in files
                for finding in find_secrets(os.path.join(ROOT, name), name)]
    assert not findings, "credentials in tracked files (remove them and rotate them):\n" + "\n".join(
        findings)


# Look-alikes of each kind, put together at run time so that this file holds none.
PLANTED = {
    "AWS access key id": "key = " + "AKIA" + "IOSFODNN7EXAMPLE",
    "AWS secret access key": "aws_secret_access_key" + " = " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "private key": "-----BEGIN " + "RSA PRIVATE KEY-----",
    "password": "password" + ' = "hunter2"',
}


@pytest.mark.parametrize("kind", sorted(PLANTED))
def test_scanner_finds_a_planted_secret(tmp_path, kind):
    path = tmp_path / "config.ini"
    path.write_text("[default]\nregion = eu-west-1\n" + PLANTED[kind] + "\n")
    assert find_secrets(str(path), "config.ini") == [f"config.ini:3: {kind}"]


@pytest.mark.parametrize("line", [
    "aws-secret-access-key: ${{ secrets.AWS_SECRET_ACCESS_KEY }}",
    'AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY"',
    "password = os.environ['PASSWORD']",
    "password = ''",
    "key = " + "AKIA" + "IOSFODNN7EXAMPLE  # " + ALLOW,
])
def test_scanner_lets_references_and_allowlisted_lines_pass(tmp_path, line):
    path = tmp_path / "ok.txt"
    path.write_text(line + "\n")
    assert find_secrets(str(path)) == []


def test_scanner_skips_binary_files(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\0\1\2" + PLANTED["AWS access key id"].encode())
    assert find_secrets(str(path)) == []
