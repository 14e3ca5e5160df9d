#!/usr/bin/env bash
# The main job end to end on loopback: a receiver with a throwaway identity,
# a sender that authorizes itself there, sample_data/ plus a 64 MiB file sent
# over one encrypted connection, a byte-for-byte check of every file, a second
# run that sends nothing, and the files listed and fetched back with ls/get.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$PWD/demo"
rm -rf "$work"
mkdir -p "$work/receiver-home" "$work/sender-home" "$work/out" "$work/extra"

recv_home="$work/receiver-home"
send_home="$work/sender-home"

echo "== 1. identities (throwaway, under demo/)"
sender_key=$(FILEXFER_HOME="$send_home" filexfer id 2>/dev/null)
receiver_fp=$(FILEXFER_HOME="$recv_home" filexfer id 2>&1 >/dev/null)
echo "sender key:           $sender_key"
echo "receiver fingerprint: $receiver_fp"
FILEXFER_HOME="$recv_home" filexfer allow --area demo "$sender_key" demo-sender

echo "== 2. receiver on 127.0.0.1 (log: demo/recv.log)"
FILEXFER_HOME="$recv_home" filexfer recv --dir "$work/out" \
    --listen 127.0.0.1:0 2>"$work/recv.log" &
recv_pid=$!
trap 'kill "$recv_pid" 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 100); do
    port=$(grep -o 'address=127.0.0.1:[0-9]*' "$work/recv.log" | cut -d: -f2 || true)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "$port" ] || { echo "receiver did not start"; cat "$work/recv.log"; exit 1; }
echo "listening on 127.0.0.1:$port"

echo "== 3. put sample_data/ and a 64 MiB file, pinning the receiver by fingerprint"
python3 -c "import os; open('$work/extra/random-64MiB.bin','wb').write(os.urandom(64 << 20))"
FILEXFER_HOME="$send_home" filexfer put --fingerprint "$receiver_fp" \
    -r sample_data "$work/extra/random-64MiB.bin" "127.0.0.1:$port" \
    --json > "$work/result.jsonl"
echo "put exited 0; $(wc -l < "$work/result.jsonl") files confirmed by the receiver"

echo "== 4. the same job again: nothing changed, so nothing is sent"
FILEXFER_HOME="$send_home" filexfer put -r sample_data \
    "$work/extra/random-64MiB.bin" "127.0.0.1:$port"

echo "== 5. list what this key stored, and fetch sample_data/ back"
FILEXFER_HOME="$send_home" filexfer ls "127.0.0.1:$port" sample_data
FILEXFER_HOME="$send_home" filexfer get "127.0.0.1:$port" -r sample_data \
    -o "$work/restored"

echo "== 6. every file arrived identical, both ways?"
python3 - "$work" <<'PY'
import hashlib, json, os, sys
work = sys.argv[1]
def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()
area = os.path.join(work, "out", "demo")
pairs = [(os.path.join(work, "extra", "random-64MiB.bin"),
          os.path.join(area, "random-64MiB.bin"))]
for top, _, files in os.walk("sample_data"):
    for name in files:
        src = os.path.join(top, name)
        pairs.append((src, os.path.join(area, src)))
        pairs.append((src, os.path.join(work, "restored", src)))
bad = 0
for src, dst in sorted(pairs):
    same = os.path.isfile(dst) and sha(src) == sha(dst)
    bad += not same
    print(f"  {'OK  ' if same else 'DIFF'} {os.path.getsize(src):>10,}  {os.path.relpath(dst, work)}")
results = [json.loads(line) for line in open(os.path.join(work, "result.jsonl"))]
print(f"  {len(pairs)} files compared, {bad} different; "
      f"{sum(r['status'] == 'ok' for r in results)} reported ok by put --json")
sys.exit(1 if bad else 0)
PY

echo "== 7. the receiver's log"
kill -TERM "$recv_pid"; wait "$recv_pid" || true
trap - EXIT
cat "$work/recv.log"
echo "== demo done: all files identical"
