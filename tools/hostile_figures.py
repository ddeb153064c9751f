#!/usr/bin/env python3
"""The hostile-input figures in RELIABILITY.md, measured against the release binary.

    cargo build --release && python3 tools/hostile_figures.py [target/release/hookrelay]

Starts the relay on loopback ports with a fresh store in a temporary directory, sends each
worst input once, and prints per input: the answer, how long it took, the relay's peak RSS
(VmHWM) after it, and how much the store directory grew. Then the connection flood: 1,024
keep-alive connections from 127.0.0.2 while a real sender posts from 127.0.0.1. Only
127.0.0.0/8 is contacted; the relay is stopped at the end.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/hookrelay")
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def du(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def peak_rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def post(port, path, body, content_type, headers=None, source="127.0.0.1"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    h = {"content-type": content_type}
    h.update(headers or {})
    started = time.monotonic()
    conn.request("POST", path, body=body, headers=h)
    resp = conn.getresponse()
    text = resp.read()
    took = time.monotonic() - started
    conn.close()
    try:
        answer = json.loads(text)
    except ValueError:
        answer = text[:80]
    return resp.status, answer, took


def mib(n):
    return f"{n / (1 << 20):.1f} MiB"


def main():
    work = tempfile.mkdtemp(prefix="hookrelay-hostile-")
    port, admin = free_port(), free_port()
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(f"""
[server]
listen = "127.0.0.1:{port}"
[store]
path = "data"
[admin]
listen = "127.0.0.1:{admin}"
[[sources]]
name = "statusgator"
kind = "statusgator"
path = "/sg"
[[sources]]
name = "pagerduty"
kind = "pagerduty"
path = "/pd"
[[targets]]
name = "outbox"
kind = "file"
path = "data/outbox.jsonl"
""")
    relay = subprocess.Popen([BIN, "serve", "--config", config], cwd=work,
                             stderr=subprocess.DEVNULL, env={**os.environ, "HOOKRELAY_LOG": "error"})
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        store = os.path.join(work, "data")

        tiny = '{"messages":[' + "{}," * 15999 + "{}]}"
        at_cap = '{"messages":[' + ",".join(
            '{"id":"m%d","type":"incident.trigger","data":{"incident":{"id":"P%d","trigger_summary_data":{"subject":"%s"}}}}'
            % (i, i, "x" * 10_200) for i in range(100)) + "]}"
        distinct = "service_name=S&current_status=down"
        i = 0
        while len(distinct) < (1 << 20) - 16:
            distinct += f"&k{i}"
            i += 1
        big_values = "service_name=Big&current_status=down&" + "&".join(
            f"k{i}={'v' * 1150}" for i in range(900))
        deep = '{"event":' + "[" * 500_000 + "]" * 500_000 + "}"
        with open(os.path.join(FIXTURES, "pagerduty-v3-incident-resolved.json"), "rb") as f:
            resolved = f.read()
        cases = [
            ("PagerDuty batch: 16,000 empty messages (32 KB)", "/pd", tiny, "application/json", None),
            ("PagerDuty batch: 100 messages of 10 KB (1 MiB, at the cap)", "/pd", at_cap, "application/json", None),
            ("form: 1 MiB of distinct keys", "/sg", distinct, "application/x-www-form-urlencoded", None),
            ("form: 900 fields of 1 KB (1 MiB)", "/sg", big_values, "application/x-www-form-urlencoded", None),
            ("JSON: 1 MiB of nesting", "/pd", deep, "application/json", None),
            ("X-Webhook-Id of 200 KB", "/pd", resolved, "application/json", {"x-webhook-id": "w" * 200 * 1024}),
        ]
        print(f"{'input':<60} {'answer':<28} {'time':>8} {'peak RSS':>10} {'store +':>10}")
        for name, path, body, ct, headers in cases:
            before = du(store)
            status, answer, took = post(port, path, body.encode() if isinstance(body, str) else body, ct, headers)
            time.sleep(1.5)  # the store's checkpoint
            grown = du(store) - before
            code = answer.get("code") or answer.get("status") if isinstance(answer, dict) else ""
            print(f"{name:<60} {f'{status} {code}':<28} {took * 1000:>6.0f}ms {mib(peak_rss(relay.pid)):>10} {mib(max(grown, 0)):>10}")

        # /healthz while two 512 KiB forms of 450 1-KB fields are parsed.
        half = "service_name=Half&current_status=down&" + "&".join(f"k{i}={'v' * 1150}" for i in range(450))
        slowest = [0.0]
        done = threading.Event()

        def probe():
            while not done.is_set():
                c = http.client.HTTPConnection("127.0.0.1", admin, timeout=60)
                t = time.monotonic()
                c.request("GET", "/healthz")
                c.getresponse().read()
                slowest[0] = max(slowest[0], time.monotonic() - t)
                c.close()
                time.sleep(0.005)

        prober = threading.Thread(target=probe)
        prober.start()
        senders = [threading.Thread(target=post, args=(port, "/sg", half.encode(), "application/x-www-form-urlencoded"))
                   for _ in range(2)]
        for s in senders:
            s.start()
        for s in senders:
            s.join()
        done.set()
        prober.join()
        print(f"/healthz during two 512 KiB forms: slowest answer {slowest[0] * 1000:.0f} ms")

        # 1,024 keep-alive connections from one address, each after a 404.
        held, refused = [], 0
        for _ in range(1024):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
                s.sendall(b"GET /nothing HTTP/1.1\r\nhost: relay\r\n\r\n")
                if s.recv(4096).startswith(b"HTTP/1.1 404"):
                    held.append(s)
                    continue
            except OSError:
                pass
            refused += 1
            s.close()
        with open(os.path.join(FIXTURES, "statusgator-v1.form"), "rb") as f:
            form = f.read()
        status, _, took = post(port, "/sg", form, "application/x-www-form-urlencoded")
        print(f"1,024 keep-alive connections from 127.0.0.2: {len(held)} held, {refused} closed; "
              f"a real sender from 127.0.0.1: {status} in {took * 1000:.0f} ms")
        for s in held:
            s.close()
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(timeout=30)
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
