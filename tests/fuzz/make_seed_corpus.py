#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Regenerates the seed corpora in tests/fuzz/corpus/<target>/ from the unit-test vectors.

Every C++ string literal of the unit tests that exercise a target's parser (adjacent literals
joined, escapes decoded, raw strings included), filtered to what looks like that target's input,
plus a few composed seeds (whole connection strings from tests/data/sas_vectors.txt, the annotated
example configuration). Files are named by the SHA-1 of their content, as libFuzzer names the
inputs it adds. Regression inputs of fixed crashes are named `regress-*` and kept by hand: this
script neither writes nor deletes them.

    tests/fuzz/make_seed_corpus.py      # from the repository root or anywhere
"""
import hashlib
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
UNIT = ROOT / "tests" / "unit"
CORPUS = ROOT / "tests" / "fuzz" / "corpus"

_TOKEN = re.compile(
    rb'R"(?P<delim>[^(\s]{0,16})\((?P<raw>.*?)\)(?P=delim)"'  # raw string
    rb'|"(?P<cooked>(?:[^"\\\n]|\\.)*)"'                      # ordinary string
    rb"|'(?:[^'\\\n]|\\.)*'"                                   # char literal (skipped)
    rb"|//[^\n]*|/\*.*?\*/"                                    # comments (skipped)
    rb"|(?P<other>\S)",
    re.S,
)


def _unescape(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    simple = {b"n": b"\n", b"t": b"\t", b"r": b"\r", b"\\": b"\\", b'"': b'"', b"'": b"'",
              b"?": b"?", b"a": b"\a", b"b": b"\b", b"f": b"\f", b"v": b"\v"}
    while i < len(body):
        c = body[i:i + 1]
        if c != b"\\":
            out += c
            i += 1
            continue
        n = body[i + 1:i + 2]
        if n == b"x":
            m = re.match(rb"[0-9A-Fa-f]+", body[i + 2:])
            out.append(int(m.group(0), 16) & 0xFF)
            i += 2 + len(m.group(0))
        elif n.isdigit():
            m = re.match(rb"[0-7]{1,3}", body[i + 1:])
            out.append(int(m.group(0), 8) & 0xFF)
            i += 1 + len(m.group(0))
        else:
            out += simple.get(n, n)
            i += 2
    return bytes(out)


def literals(path: pathlib.Path) -> list[bytes]:
    """The string literals of a C++ file, adjacent ones joined as the compiler does."""
    result: list[bytes] = []
    current: bytes | None = None
    for m in _TOKEN.finditer(path.read_bytes()):
        if m.group("raw") is not None:
            piece = m.group("raw")
        elif m.group("cooked") is not None:
            piece = _unescape(m.group("cooked"))
        elif m.group(0).startswith((b"//", b"/*")):
            continue  # a comment between two literals does not separate them
        else:
            if current is not None:
                result.append(current)
            current = None
            continue
        current = piece if current is None else current + piece
    if current is not None:
        result.append(current)
    return result


def sas_vectors() -> list[list[bytes]]:
    lines = (ROOT / "tests" / "data" / "sas_vectors.txt").read_bytes().splitlines()
    return [line.split(b"|") for line in lines if line and not line.startswith(b"#")]


def from_tests(*files: str) -> list[bytes]:
    return [lit for f in files for lit in literals(UNIT / f)]


def seeds() -> dict[str, list[bytes]]:
    vectors = sas_vectors()
    keys = [v[2] for v in vectors]
    tokens = [v[5] for v in vectors]
    connection_strings = []
    for name, uri, key, _, policy, token in vectors:
        if policy != b"-":
            continue
        host, _, rest = uri.partition(b"/devices/")
        device, _, module = rest.partition(b"/modules/")
        ids = b"HostName=" + host + b";DeviceId=" + device
        if module:
            ids += b";ModuleId=" + module
        connection_strings += [ids + b";SharedAccessKey=" + key,
                               ids + b";SharedAccessSignature=" + token,
                               ids + b";GatewayHostName=edge.local;x509=true;"]

    def any_text(lit: bytes) -> bool:
        return len(lit) > 0

    return {
        "base64": [l for l in from_tests("proto/base64_test.cpp") if any_text(l)] + keys,
        "percent-encoding": from_tests("proto/percent_encoding_test.cpp"),
        "property-bag": [l for l in from_tests("proto/topics_test.cpp",
                                               "proto/percent_encoding_test.cpp")
                         if b"=" in l or b"&" in l],
        "topics": [l for l in from_tests("proto/topics_test.cpp") if b"/" in l],
        "json": [l for l in from_tests("proto/twin_test.cpp")
                 if l[:1] in b'{["-0123456789tfn \t\n'],
        "sas-token": [l for l in from_tests("proto/sas_token_test.cpp",
                                            "proto/connection_string_test.cpp")
                      if l.startswith(b"SharedAccessSignature") or b"sr=" in l] + tokens,
        "connection-string": [l for l in from_tests("proto/connection_string_test.cpp")
                              if b"=" in l] + connection_strings,
        "config": [l for l in from_tests("config/settings_test.cpp",
                                         "config/provisioning_config_test.cpp") if b"\n" in l]
                  + [(ROOT / "config" / "iothubd.conf").read_bytes()],
        "file-upload": [l for l in from_tests("proto/file_upload_test.cpp") if any_text(l)],
        "dps": [l for l in from_tests("proto/provisioning_test.cpp") if any_text(l)],
        # The first two bytes choose where the reader's input is split.
        "http-head": [b"\x00\x08" + l for l in from_tests("relay/http_head_test.cpp",
                                                            "relay/websocket_codec_test.cpp",
                                                            "relay/proxy_handshake_test.cpp")
                      if b"HTTP/" in l],
        # FuzzedDataProvider takes the protocol and the read sizes from the end.
        "proxy-handshake": [l + tail for l in from_tests("relay/proxy_handshake_test.cpp")
                            if any_text(l) for tail in (b"\x10\x01\x00", b"\x10\x01\x01",
                                                        b"\x10\x00\x02")],
        # The first byte chooses the read size.
        "websocket": [b"\x05" + l for l in from_tests("relay/websocket_codec_test.cpp")
                      if any_text(l)],
        "utc-time": [l for l in from_tests("outbox/utc_time_test.cpp") if b"-" in l],
    }


def main() -> None:
    for target, inputs in seeds().items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("seed-*"):
            old.unlink()
        for data in set(inputs):
            name = "seed-" + hashlib.sha1(data).hexdigest()
            (directory / name).write_bytes(data)
        print(f"{target}: {len(set(inputs))} seeds")


if __name__ == "__main__":
    main()
