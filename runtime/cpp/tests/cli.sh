#!/bin/sh
# restr-predict-cpp as a user runs it: outputs written, bad input one line on stderr with exit code 2.
#   cli.sh RESTR_PREDICT_CPP EXPORT_DIR GOLDEN_DIR SCRATCH
set -u
CLI=$1 EXPORT=$2 GOLDEN=$3 S=$4
[ -x "$CLI" ] || { echo "cli: $CLI is not built" >&2; exit 1; }
rm -rf "$S" && mkdir -p "$S"
fails=0
no() { echo "cli: FAILED: $*" >&2; fails=$((fails + 1)); }

# expect CODE "stderr text" ARGS...: exit code CODE, stderr one line holding the text
expect() {
  code=$1 text=$2
  shift 2
  "$CLI" "$@" > "$S/stdout" 2> "$S/stderr"
  got=$?
  [ "$got" = "$code" ] || no "$* -> exit $got, want $code: $(cat "$S/stderr")"
  [ "$code" = 0 ] && return
  [ "$(wc -l < "$S/stderr")" = 1 ] || no "$* -> stderr is not one line: $(cat "$S/stderr")"
  grep -q -- "$text" "$S/stderr" || no "$* -> stderr lacks '$text': $(cat "$S/stderr")"
}

IMG="$GOLDEN/images/photo1.png"
expect 0 "" --help
expect 0 "" --artifacts "$EXPORT" --list-words
grep -qx "dog" "$S/stdout" || no "--list-words does not list 'dog'"
# --list-words reads the vocabulary only (restr-predict loads no graph): a broken graph, or graphs of
# another precision, do not stop it
cp -r "$EXPORT" "$S/broken" && printf 'x' >> "$S/broken/vision.onnx"
expect 0 "" --artifacts "$S/broken" --list-words --precision fp16
grep -qx "dog" "$S/stdout" || no "--list-words on an export with a broken graph does not list 'dog'"
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "the red dog" --text "the man on the left" --out "$S/out" --overlay --sheet --threads 1
for f in 1_the-red-dog.png 1_the-red-dog_overlay.png 2_the-man-on-the-left.png sheet.png summary.json; do [ -s "$S/out/$f" ] || no "missing output $f"; done
# --providers cuda: CUDA with a GPU build (and a GPU); otherwise, as restr-predict, one warning line
# and the CPU. --providers auto takes the same provider without a word.
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/cuda" --providers cuda --threads 1
if grep -q '"CUDAExecutionProvider"' "$S/cuda/summary.json"; then
  want=CUDAExecutionProvider
  [ ! -s "$S/stderr" ] || no "--providers cuda on CUDA warned: $(cat "$S/stderr")"
else
  want=CPUExecutionProvider
  { [ "$(wc -l < "$S/stderr")" = 1 ] && grep -q "^warning: CUDA.*; skipped$" "$S/stderr"; } ||
    no "--providers cuda without CUDA: want one warning line, got: $(cat "$S/stderr")"
fi
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/auto" --providers auto --threads 1
grep -q "\"$want\"" "$S/auto/summary.json" || no "--providers auto: the summary does not name $want"
[ ! -s "$S/stderr" ] || no "--providers auto warned: $(cat "$S/stderr")"
# a file name that is not UTF-8 (Linux paths are bytes): the summary still gets written
cp "$IMG" "$S/caf$(printf '\377').png"
expect 0 "" --artifacts "$EXPORT" --image "$S/caf$(printf '\377').png" --text "dog" --out "$S/latin1" --threads 1
grep -q '"path": ".*caf' "$S/latin1/summary.json" 2> /dev/null || no "non-UTF-8 image path: no summary.json naming it"
# --json FILE: its folder is made (as restr-predict); a folder given as FILE is refused before any work
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/j1" --json "$S/new/deeper/s.json" --threads 1
[ -s "$S/new/deeper/s.json" ] || no "--json into a folder still to be made: not written"
expect 2 "is a folder, expected a file name" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/o2" --json "$S"
expect 2 "the folder holds files" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/out"
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/out" --force
for f in 2_the-man-on-the-left.png 1_the-red-dog_overlay.png sheet.png; do [ ! -e "$S/out/$f" ] || no "--force left the previous run's $f"; done
# staging folders of runs that died without cleaning up (their pid is gone), this CLI's and
# restr-predict's, are removed and are no files; a live run's is left alone and counts as files
mkdir -p "$S/stale/.restr-predict-cpp-99999999-AbC123" "$S/stale/.restr-predict-99999999-x_Y9" "$S/live/.restr-predict-cpp-$$-AbC123"
printf 'half a PNG' > "$S/stale/.restr-predict-cpp-99999999-AbC123/1_dog.png"
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/stale" --threads 1
[ "$(ls -A "$S/stale" | tr '\n' ' ')" = "1_dog.png summary.json " ] || no "stale staging folders left: $(ls -A "$S/stale")"
expect 2 "the folder holds files" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/live"
expect 0 "" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/live" --force --threads 1
[ -d "$S/live/.restr-predict-cpp-$$-AbC123" ] || no "--force removed a live run's staging folder"
expect 2 "no such folder" --artifacts "$S/missing" --image "$IMG" --text "dog" --out "$S/o2"
expect 2 "no such file" --artifacts "$EXPORT" --image "$S/missing.png" --text "dog" --out "$S/o2"
printf 'not an image' > "$S/bad.png"
expect 2 "not a readable image" --artifacts "$EXPORT" --image "$S/bad.png" --text "dog" --out "$S/o2"
expect 2 "is empty: it has no words" --artifacts "$EXPORT" --image "$IMG" --text "  ?! " --out "$S/o2"
expect 2 "expression 2 is not valid UTF-8" --artifacts "$EXPORT" --image "$IMG" --text "dog" --text "$(printf 'the \377 dog')" --out "$S/o2"
expect 2 "No such option '--txt'. (did you mean one of: '--out', '--text'?) (see --help)" --artifacts "$EXPORT" --image "$IMG" --txt "dog" --out "$S/o2"
expect 2 "Missing option '--text'" --artifacts "$EXPORT" --image "$IMG" --out "$S/o2"
expect 2 "Invalid value for '--threads'" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/o2" --threads 1e20
expect 2 "not in the range" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/o2" --threshold 2
expect 2 "runs ONNX Runtime only" --artifacts "$EXPORT" --image "$IMG" --text "dog" --out "$S/o2" --backend tensorrt
[ ! -e "$S/o2" ] || no "a failed run left $S/o2 behind"
[ "$fails" = 0 ] && echo "cli: ok" || exit 1
