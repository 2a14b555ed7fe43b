"""OpenVPN map: status files and management replies captured from Debian's OpenVPN 2.6.14."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from repogate.errors import SourceError
from repogate.sources.devices import openvpn
from repogate.sources.devices.openvpn import OpenvpnManagement, parse_status, read_status_file

TITLE = "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [AEAD]"
CLIENTS = (
    "Common Name,Real Address,Virtual Address,Virtual IPv6 Address,Bytes Received,Bytes Sent,"
    "Connected Since,Connected Since (time_t),Username,Client ID,Peer ID,Data Channel Cipher"
)
# `status <file> 1` + `status-version 2`, one client (the lab's server, 2026 clock).
V2 = f"""\
TITLE,{TITLE}
TIME,2026-11-29 12:13:50,1795954430
HEADER,CLIENT_LIST,{CLIENTS}
CLIENT_LIST,alice-laptop,192.0.2.2:60921,10.8.0.2,fd00:8::1000,2039,2070,2026-11-29 12:13:49,1795954429,UNDEF,0,0,AES-256-GCM
HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)
ROUTING_TABLE,fd00:8::1000,alice-laptop,192.0.2.2:60921,2026-11-29 12:13:49,1795954429
ROUTING_TABLE,10.8.0.2,alice-laptop,192.0.2.2:60921,2026-11-29 12:13:49,1795954429
GLOBAL_STATS,Max bcast/mcast queue length,0
GLOBAL_STATS,dco_enabled,0
END
"""  # noqa: E501 - a captured line
# The management interface's `status 3` answer: tabs and CRLF.
V3 = V2.replace(",", "\t").replace("\n", "\r\n")
NOW = 1795954431.0


@pytest.mark.parametrize("text", [V2, V3], ids=["v2", "v3"])
def test_captured_status_gives_name_and_virtual_addresses(text: str) -> None:
    status = parse_status(text, where="status", interface="tun0")
    (seen,) = status.sightings
    assert (seen.kind, seen.identity, seen.addresses, seen.interface) == (
        "openvpn",
        "alice-laptop",
        ("10.8.0.2", "fd00:8::1000"),
        "tun0",
    )
    assert seen.detail.endswith("from 192.0.2.2:60921")
    (client,) = status.clients
    assert (client.connected_since, client.client_id, client.line) == (1795954429.0, 0, 4)
    assert status.complete and status.rejected_count == 0 and status.updated == 1795954430.0


def _status(header: str, *rows: str, end: bool = True) -> str:
    rows = tuple(f"CLIENT_LIST,{row}" for row in rows)
    lines = [f"TITLE,{TITLE}", "TIME,x,1795954430", f"HEADER,CLIENT_LIST,{header}", *rows]
    return "\n".join([*lines, "END"] if end else lines) + "\n"


def test_columns_found_by_name_and_extra_columns_ignored() -> None:
    text = _status(
        "Future Column,Virtual IPv6 Address,Common Name,Virtual Address",
        "x,fd00:8::1001,bob-laptop,10.8.0.3",
    )
    assert parse_status(text, where="s").sightings[0].addresses == ("10.8.0.3", "fd00:8::1001")


def test_older_server_without_ipv6_column() -> None:
    old = "Common Name,Real Address,Virtual Address,Bytes Received,Bytes Sent,Connected Since"
    text = _status(old, "bob-laptop,192.0.2.9:1194,10.8.0.3,1,2,Sun Nov 29 12:00:00 2026")
    (seen,) = parse_status(text, where="s").sightings
    assert seen.addresses == ("10.8.0.3",) and "connected since ?" in seen.detail


def test_bad_rows_rejected_with_line_and_reason_others_kept() -> None:
    header = "Common Name,Real Address,Virtual Address,Virtual IPv6 Address"
    text = _status(
        header,
        "UNDEF,192.0.2.5:1,10.8.0.5,",
        ",192.0.2.5:1,10.8.0.6,",
        "carol-laptop,192.0.2.6:1,,",
        "dave-laptop,192.0.2.7:1,10.8.0.999,",
        "erin-laptop,192.0.2.8:1,52:54:00:12:34:56,",  # a tap server's MAC
        "frank,laptop,192.0.2.8:1,10.8.0.7,",  # a comma in the name shifts the columns
        "alice-laptop,192.0.2.2:1,10.8.0.2,",
    )
    status = parse_status(text, where="status.log")
    assert [s.identity for s in status.sightings] == ["alice-laptop"]
    assert status.rejected_count == 6
    located = [(r.where, r.reason) for r in status.rejected]
    assert located[0] == ("status.log:4", "no certificate common name (UNDEF)")
    assert located[1] == ("status.log:5", "no certificate common name (blank)")
    assert located[2] == ("status.log:6", "carol-laptop: no virtual address (still connecting?)")
    assert "not an IP address" in located[3][1] and "not an IP address" in located[4][1]
    assert located[5] == ("status.log:9", "5 fields where the HEADER names 4")


def test_truncated_mid_line_rejects_the_fragment_and_says_incomplete() -> None:
    cut = V2[: V2.index("fd00:8::1000") + 5]  # inside alice's row
    status = parse_status(cut, where="s")
    assert status.sightings == () and not status.complete
    assert [r.reason for r in status.rejected] == [
        "cut short mid-line (file being rewritten?)",
        "no END line: cut short, clients may be missing",
    ]


def test_torn_rewrite_seam_and_tail_after_end_rejected() -> None:
    # A shorter new file written over a longer old one: new head, old fragment, old tail.
    torn = V2 + "0.3,fd00:8::1001,1,2,x,1795954000,UNDEF,1,1,AES\nEND\n"
    status = parse_status(torn, where="s")
    assert [s.identity for s in status.sightings] == ["alice-laptop"]
    assert [r.reason for r in status.rejected] == ["after END (file being rewritten?)"] * 2


def test_duplicate_cn_merges_into_one_sighting() -> None:
    header = "Common Name,Real Address,Virtual Address,Virtual IPv6 Address"
    text = _status(header, "bob,192.0.2.5:1,10.8.0.9,", "bob,192.0.2.6:1,10.8.0.5,fd00:8::5")
    (seen,) = parse_status(text, where="s").sightings
    assert seen.addresses == ("10.8.0.5", "10.8.0.9", "fd00:8::5")
    assert seen.detail.endswith("(2 connections)")


def test_rows_before_header_and_version_1_files() -> None:
    status = parse_status("TIME,x,1\nCLIENT_LIST,a,b,10.8.0.2\nEND\n", where="s")
    assert status.rejected[0].reason == "CLIENT_LIST row before its HEADER"
    with pytest.raises(SourceError, match="not a status-version 2 or 3 file"):
        parse_status("OpenVPN CLIENT LIST\nUpdated,2026-11-29 12:13:50\n", where="s")


def test_file_freshness_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "status.log"
    path.write_text(V2)
    assert read_status_file(path, now=NOW, max_age=30).sightings[0].identity == "alice-laptop"
    with pytest.raises(SourceError, match="written 570 s ago"):
        read_status_file(path, now=NOW + 569, max_age=30)
    with pytest.raises(SourceError, match="No such file"):
        read_status_file(tmp_path / "missing", now=NOW, max_age=30)
    path.write_text(V2.replace("TIME,2026-11-29 12:13:50,1795954430\n", ""))
    with pytest.raises(SourceError, match="no TIME line"):
        read_status_file(path, now=NOW, max_age=30)
    os.chmod(path, 0)
    if os.geteuid() != 0:  # root reads it anyway
        with pytest.raises(SourceError, match="Permission denied"):
            read_status_file(path, now=NOW, max_age=30)


# -- a status file read while OpenVPN rewrites it -----------------------------------------

BOB = "bob-laptop,192.0.2.3:5000,10.8.0.3,fd00:8::1001,1,2,2026-11-29 12:13:49,1795954429,UNDEF,1,1,AES-256-GCM"  # noqa: E501 - a status row
# The server's new file lists alice and bob; a read that meets the rewrite sees its new
# head, then a fragment of the old file's row at the seam, then the old tail with its END.
NEW = V2.replace("HEADER,ROUTING_TABLE", f"CLIENT_LIST,{BOB}\nHEADER,ROUTING_TABLE")
TORN = NEW[: NEW.index(f"CLIENT_LIST,{BOB}")] + "0.9,fd00:8::1009,7,7\n" + V2[V2.index("GLOBAL") :]


def pauses_doing(monkeypatch: pytest.MonkeyPatch, *actions: Callable[[], object]) -> list[float]:
    """The pauses between reads, recorded instead of slept; the n-th runs `actions[n]`
    (a rewrite landing between two reads), so the test does not race a thread."""
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        if len(pauses) < len(actions):
            actions[len(pauses)]()
        pauses.append(seconds)

    monkeypatch.setattr(time, "sleep", pause)  # the module's pause (openvpn.time.sleep)
    return pauses


def test_a_torn_seam_is_read_again_and_the_whole_file_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    once = parse_status(TORN, where="s")
    assert once.complete  # it has an END: only the seam tells, and bob is missing
    assert [s.identity for s in once.sightings] == ["alice-laptop"]
    path = tmp_path / "status.log"
    path.write_text(TORN)
    pauses = pauses_doing(monkeypatch, lambda: path.write_text(NEW))
    status = read_status_file(path, now=NOW, max_age=30)
    assert [s.identity for s in status.sightings] == ["alice-laptop", "bob-laptop"]
    assert status.rejected == ()
    assert pauses == [openvpn.REREAD_PAUSE]


def test_a_file_without_end_after_every_read_fails_rather_than_revoking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsed, it would admit only the clients before the cut (alice): the group's last
    good entries must be kept instead."""
    path = tmp_path / "status.log"
    path.write_text(NEW[: NEW.index("bob-laptop") + 3])
    pauses = pauses_doing(monkeypatch)
    with pytest.raises(SourceError, match=r"no END line in 3 reads .*cut short") as caught:
        read_status_file(path, now=NOW, max_age=30)
    assert str(caught.value).startswith(f"{path}: ")
    assert pauses == [openvpn.REREAD_PAUSE] * (openvpn.READ_ATTEMPTS - 1)


def test_a_file_completed_between_reads_is_parsed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "status.log"
    path.write_text(NEW[: NEW.index("bob-laptop") + 3])
    pauses_doing(monkeypatch, lambda: None, lambda: path.write_text(NEW))  # on the 3rd read
    status = read_status_file(path, now=NOW, max_age=30)
    assert [s.identity for s in status.sightings] == ["alice-laptop", "bob-laptop"]


def _serve(path: Path, replies: list[str]) -> tuple[threading.Thread, list[bytes]]:
    """A fake management socket: the real greeting, then one canned reply per connection."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    received: list[bytes] = []

    def serve() -> None:
        with server:
            for reply in replies:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b">INFO:OpenVPN Management Interface Version 5 -- help\r\n")
                    received.append(conn.recv(4096))
                    conn.sendall(reply.encode())
                    conn.recv(4096)  # `quit`

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, received


def test_management_status_kill_and_client_kill(tmp_path: Path) -> None:
    path = tmp_path / "mgmt.sock"
    replies = [
        ">BYTECOUNT_CLI:0,1,2\r\n" + V3,
        "SUCCESS: common name 'alice-laptop' found, 1 client(s) killed\r\n",
        "ERROR: common name 'nobody' not found\r\n",
        "SUCCESS: client-kill command succeeded\r\n",
    ]
    thread, received = _serve(path, replies)
    client = OpenvpnManagement(path, timeout=2)
    assert [s.identity for s in client.status().sightings] == ["alice-laptop"]
    assert client.kill("alice-laptop") == 1
    assert client.kill('no"body') == 0
    client.client_kill(7)
    thread.join(timeout=2)
    assert received == [
        b"status 3\n",
        b'kill "alice-laptop"\n',
        b'kill "no\\"body"\n',
        b"client-kill 7 HALT\n",
    ]


def test_management_refuses_control_characters_and_times_out(tmp_path: Path) -> None:
    client = OpenvpnManagement(tmp_path / "none.sock", timeout=0.2)
    with pytest.raises(ValueError, match="control characters"):
        client.kill("alice\nsignal SIGTERM")
    with pytest.raises(SourceError, match=r"none\.sock"):
        client.status()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)
    with silent, pytest.raises(SourceError, match="no answer to 'status' in time"):
        OpenvpnManagement(tmp_path / "silent.sock", timeout=0.2).status()
