"""Benchmarks: ckptkit and its baseline side by side, as whole processes, medians of several runs.

    make bench                       # all
    .venv/bin/python bench/run.py startup fold      # some
    BENCH_SIZES=large BENCH_COMMANDS=to-onnx,fold .venv/bin/python bench/run.py sizes   # part of the sizes table

Prints wall-clock medians, peak RSS (max over runs) and the ratio ckptkit / baseline, each against the
target issue #15 sets, and where ckptkit's time goes (CKPTKIT_PHASES: TensorFlow import, graph build,
import to IR, checkpoint reads, write, verification; "rest" is Python start-up and everything not in a
phase), and appends all of it to bench/RESULTS.md with the machine and the device it ran on.
"""
from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORK = os.path.join(HERE, "work")
PY = sys.executable
CKPTKIT = [PY, "-m", "ckptkit.cli", "-q"]
REPS = int(os.environ.get("BENCH_REPS", "3"))
os.environ.setdefault("CKPTKIT_CACHE_DIR", os.path.join(WORK, "cache"))  # the bench's own --arch graph cache

# Runs a command and prints its peak RSS (kB) on the last line of stderr.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
            "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(r.returncode)")


class Run(tuple):
    """(median seconds, peak MB), with .phases: {phase: median seconds} when the command reports them."""
    phases: dict


def measure(cmd: list[str], reps: int = REPS, env: dict | None = None) -> Run:
    """(median seconds, peak MB) of `cmd` over `reps` runs; fails loudly if the command fails."""
    times, peaks, phases = [], [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        proc = subprocess.run([PY, "-c", _MEASURE, *cmd], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "CKPTKIT_PHASES": "1", **(env or {})})
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
        peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_KB")][-1]
        peaks.append(int(peak.split()[1]) / 1024)
        run: dict = {}
        for line in proc.stderr.splitlines():
            if line.startswith("CKPTKIT_PHASE "):
                _, seconds, name = line.split(" ", 2)
                run[name] = run.get(name, 0.0) + float(seconds)
        phases.append(run)
    result = Run((statistics.median(times), max(peaks)))
    names = [n for run in phases for n in run]
    result.phases = {n: statistics.median(run.get(n, 0.0) for run in phases) for n in dict.fromkeys(names)}
    return result


def breakdown(run: Run) -> str:
    """'import TensorFlow 2.9 s, build TF graph 0.8 s, ..., rest 0.4 s' (phases in the order they ran)."""
    if not run.phases:
        return ""
    rest = run[0] - sum(run.phases.values())
    return ", ".join(f"{n} {s:.2f}" for n, s in [*run.phases.items(), ("rest", rest)])


def script(code: str) -> list[str]:
    return [PY, "-c", code]


def ensure(prefix: str, maker: str) -> str:
    if not os.path.exists(prefix + ".index"):
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        subprocess.run(script(maker), check=True, cwd=ROOT)
    return prefix


def resnet_ckpt() -> str:
    return arch_ckpt("resnet_v1_50")


def bench_to_onnx(rows: list) -> None:
    prefix = resnet_ckpt()
    out = os.path.join(WORK, "r50.onnx")
    ours = measure(CKPTKIT + ["to-onnx", prefix, "--arch", "resnet_v1_50", "-o", out])
    frozen = os.path.join(WORK, "r50_frozen.pb")
    freeze = (
        "import tensorflow as tf; from ckptkit.topology import archs; from ckptkit.core.compat import slim; slim()\n"
        "tf1 = tf.compat.v1; g = tf.Graph()\n"
        "with g.as_default():\n"
        " x = tf1.placeholder(tf.float32, [None, 224, 224, 3], name='input')\n"
        " y = tf.identity(archs.builder('resnet_v1_50', 1000)(x), name='logits')\n"
        " s = tf1.Session(); tf1.train.Saver().restore(s, %r)\n"
        " gd = tf1.graph_util.convert_variables_to_constants(s, g.as_graph_def(), ['logits'])\n"
        " open(%r, 'wb').write(gd.SerializeToString())\n") % (prefix, frozen)
    baseline_cmd = ["bash", "-c", f"{PY} -c \"{freeze}\" && {PY} -m tf2onnx.convert --graphdef {frozen} "
                                  f"--inputs input:0 --outputs logits:0 --output {out}.tf2onnx --opset 17"]
    base = measure(baseline_cmd)
    rows.append(("to-onnx resnet_v1_50 (verify on) vs freeze + tf2onnx", ours, base))


def bench_to_tflite(rows: list) -> None:
    """to-tflite (the folded IR as a graph of constants, TensorFlow's converter, LiteRT verification) against
    TensorFlow's own converter run on a frozen graph of the same network (no verification, no BN folding of its own)."""
    arch = "inception_v1"
    prefix = arch_ckpt(arch)
    out = os.path.join(WORK, "i1.tflite")
    ours = measure(CKPTKIT + ["to-tflite", prefix, "--arch", arch, "-o", out])
    frozen = os.path.join(WORK, "i1_frozen.pb")
    convert = (
        "import tensorflow as tf; from ckptkit.topology import archs; from ckptkit.core.compat import slim; slim()\n"
        "tf1 = tf.compat.v1; g = tf.Graph()\n"
        "with g.as_default():\n"
        " x = tf1.placeholder(tf.float32, [1, 224, 224, 3], name='input')\n"
        " y = tf.identity(archs.builder(%r, 1000)(x), name='logits')\n"
        " s = tf1.Session(); tf1.train.Saver().restore(s, %r)\n"
        " gd = tf1.graph_util.convert_variables_to_constants(s, g.as_graph_def(), ['logits'])\n"
        " open(%r, 'wb').write(gd.SerializeToString())\n"
        "c = tf1.lite.TFLiteConverter.from_frozen_graph(%r, ['input'], ['logits'])\n"
        "open(%r, 'wb').write(c.convert())\n") % (arch, prefix, frozen, frozen, out + ".tf.tflite")
    base = measure([PY, "-c", convert])
    rows.append((f"to-tflite {arch} (verify on) vs freeze + TF's LiteRT converter", ours, base))


def arch_ckpt(arch: str) -> str:
    """A random-weight checkpoint of a tf_slim.nets network at 224 px, with its training .meta beside it."""
    prefix = os.path.join(WORK, arch, "model.ckpt")
    return ensure(prefix, "from ckptkit import testing as T; "
                          f"T.save_model(T.arch_net({arch!r}, num_classes=1000), (224, 224, 3), {prefix!r})")


def checkpoint_mb(prefix: str) -> float:
    folder, base = os.path.split(prefix)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
               if f.startswith(base + ".data-") or f == base + ".index") / 2**20


def freeze_and_tf2onnx(arch: str, prefix: str, out: str) -> list[str]:
    """The peer: freeze the slim graph with TF (tf2onnx needs a frozen graph), then tf2onnx.convert."""
    frozen = out + ".frozen.pb"
    freeze = (
        "import tensorflow as tf; from ckptkit.topology import archs; from ckptkit.core.compat import slim; slim()\n"
        "tf1 = tf.compat.v1; g = tf.Graph()\n"
        "with g.as_default():\n"
        " x = tf1.placeholder(tf.float32, [None, 224, 224, 3], name='input')\n"
        " y = tf.identity(archs.builder(%r, 1000)(x), name='logits')\n"
        " s = tf1.Session(); tf1.train.Saver().restore(s, %r)\n"
        " gd = tf1.graph_util.convert_variables_to_constants(s, g.as_graph_def(), ['logits'])\n"
        " open(%r, 'wb').write(gd.SerializeToString())\n") % (arch, prefix, frozen)
    return ["bash", "-c", f"{PY} -c \"{freeze}\" && {PY} -m tf2onnx.convert --graphdef {frozen} "
                          f"--inputs input:0 --outputs logits:0 --output {out}.tf2onnx --opset 17"]


# issue #26: small, medium and large networks through every writing command, peak memory against the
# checkpoint's size, to-onnx beside the peer
SIZES = [("small", "inception_v1"), ("medium", "resnet_v1_50"), ("large", "vgg_16_bn")]
COMMANDS = [("to-onnx", "m.onnx"), ("to-keras", "m.keras"), ("to-caffe", "m"), ("export", "all/"),
            ("fold", "folded.ckpt")]
SIZE_ROWS: list = []


def bench_sizes(rows: list) -> None:
    """BENCH_SIZES=small,large and BENCH_COMMANDS=to-caffe,export run part of the table."""
    sizes = os.environ.get("BENCH_SIZES", "").split(",") if os.environ.get("BENCH_SIZES") else None
    commands = os.environ.get("BENCH_COMMANDS", "").split(",") if os.environ.get("BENCH_COMMANDS") else None
    for size, arch in SIZES:
        if sizes and size not in sizes:
            continue
        prefix = arch_ckpt(arch)
        ckpt = checkpoint_mb(prefix)
        # the --arch graph cache (ckptkit.topology.graph_cache) warmed first: the rows are what a second command on a
        # network costs; to-onnx is also measured with the cache off (what the first command costs)
        subprocess.run(script(f"from ckptkit import load; load({prefix!r}, arch={arch!r}, weights=False)"),
                       capture_output=True, cwd=ROOT, check=True)
        for command, out in COMMANDS:
            if commands and command not in commands:
                continue
            target = os.path.join(WORK, f"{arch}_out", out)
            extra = ["--to", "onnx,keras,caffe"] if command == "export" else []
            cmd = CKPTKIT + [command, prefix, "--arch", arch, *extra, "-o", target]
            if command == "to-onnx":
                cold = measure(cmd, env={"CKPTKIT_CACHE_DIR": ""})
                SIZE_ROWS.append((f"{size}: {arch} ({ckpt:.0f} MB)", "to-onnx, graph cache off", ckpt, cold, None))
            ours = measure(cmd)
            peer = None
            if command == "to-onnx" and (size != "large" or os.environ.get("BENCH_PEER_LARGE") == "1"):
                peer = measure(freeze_and_tf2onnx(arch, prefix, target))
            SIZE_ROWS.append((f"{size}: {arch} ({ckpt:.0f} MB)", command, ckpt, ours, peer))
            print(f"  {arch} {command}: {ours[0]:.2f} s, {ours[1]:.0f} MB ({ours[1] / ckpt:.1f}x the checkpoint)",
                  flush=True)
            for runtime, cmd in floor_commands(command, target):
                floor = measure(cmd)
                SIZE_ROWS.append((f"{size}: {arch} ({ckpt:.0f} MB)", f"floor: {runtime}", ckpt, floor, None))
                print(f"  {arch} floor {runtime}: {floor[0]:.2f} s, {floor[1]:.0f} MB", flush=True)


def floor_commands(command: str, target: str) -> list[tuple[str, list[str]]]:
    """What the runtimes an export is verified in cost on their own: a fresh process that only loads the
    written files the way a user does and runs the verification's 4 samples (224 px). An export's peak memory
    cannot go below these (its verification runs exactly this), whatever ckptkit does."""
    x = os.path.join(WORK, "x224.npy")
    if not os.path.exists(x):
        subprocess.run(script(f"import numpy as np; np.save({x!r}, np.random.default_rng(0).random((4, 224, 224, 3), "
                              "np.float32))"), check=True)
    if command == "to-onnx":
        return [("onnxruntime InferenceSession, default options, + run", script(
            f"import onnxruntime as ort, numpy as np; s = ort.InferenceSession({target!r}, "
            "providers=['CPUExecutionProvider']); s.run(None, {s.get_inputs()[0].name: "
            f"np.load({x!r})}})"))]
    if command == "to-keras":  # with oneDNN off, as ckptkit runs TF for a check (less memory than the default)
        return [("keras.models.load_model + run", ["env", "TF_ENABLE_ONEDNN_OPTS=0", *script(
            f"import keras, numpy as np; m = keras.models.load_model({target!r}, compile=False); "
            f"m(np.load({x!r}), training=False)")])]
    if command == "to-caffe":
        proto, model = target + ".prototxt", target + ".caffemodel"
        return [("OpenCV readNetFromCaffe + run", script(
            f"import cv2, numpy as np; n = cv2.dnn.readNetFromCaffe({proto!r}, {model!r}); "
            f"n.setInput(np.load({x!r}).transpose(0, 3, 1, 2).copy()); n.forward()")),
            ("MNN convert + run", [PY, "-I", os.path.join(ROOT, "converters", "mnn_worker.py"), proto, model, x,
                                    x + ".mnn-out.npy"])]
    return []


def sizes_table() -> list[str]:
    if not SIZE_ROWS:
        return []
    lines = ["", "Every writing command by network size (peak RSS of the whole process against the checkpoint's "
             "size; the peer, freeze + tf2onnx, for to-onnx; it is not run on the large net, which the OOM killer "
             "stopped at 24 GB in issue #26, unless BENCH_PEER_LARGE=1; rows named floor: a runtime the export is "
             "verified in, alone in a fresh process, loading the written files as a user does and running the "
             "verification's 4 samples: an export's peak cannot go below its runtimes' floors):", "",
             "| network (checkpoint) | command | ckptkit s | ckptkit peak MB | peak / checkpoint | peer s | peer peak MB "
             "| time ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for net, command, ckpt, (t, m), peer in SIZE_ROWS:
        p = f"{peer[0]:.2f} | {peer[1]:.0f} | {t / peer[0]:.2f}" if peer else "| | "
        lines.append(f"| {net} | {command} | {t:.2f} | {m:.0f} | {m / ckpt:.1f}x | {p} |")
    lines += ["", "Where the time goes:", ""]
    lines += [f"- {net} {command}: {breakdown(ours)}" for net, command, _, ours, _ in SIZE_ROWS if ours.phases]
    return lines


def bench_fold(rows: list) -> None:
    prefix = os.path.join(WORK, "vgg16_bn_meta", "model.ckpt")  # with its training .meta beside it
    ensure(prefix, "from ckptkit import testing as T; "
                   f"T.save_model(T.arch_net('vgg_16_bn', num_classes=1000), (224, 224, 3), {prefix!r})")
    out = os.path.join(WORK, "vgg_folded.ckpt")
    read = ("import tensorflow as tf; r = tf.train.load_checkpoint(%r)\n"
            "for n in r.get_variable_to_shape_map(): r.get_tensor(n)\n") % prefix
    base = measure(script(read))
    ours = measure(CKPTKIT + ["fold", prefix, "--arch", "vgg_16_bn", "-o", out])
    rows.append(("fold vgg_16_bn --arch peak memory vs read every tensor once", ours, base))
    ours = measure(CKPTKIT + ["fold", prefix, "-o", out])
    rows.append(("fold vgg_16_bn from its .meta peak memory vs read every tensor once", ours, base))


def bench_recalibrate(rows: list) -> None:
    import numpy as np

    prefix = resnet_ckpt()
    data = os.path.join(WORK, "calib")
    n = int(os.environ.get("BENCH_SAMPLES", "256"))
    if not os.path.exists(os.path.join(data, "x.npy")):
        os.makedirs(data, exist_ok=True)
        np.save(os.path.join(data, "x.npy"), np.random.default_rng(0).normal(0, 1, (n, 224, 224, 3)).astype(np.float32))
    out = os.path.join(WORK, "r50_recal.ckpt")
    ours = measure(CKPTKIT + ["recalibrate", prefix, "--arch", "resnet_v1_50", "--data", data, "-o", out,
                              "--batch-size", "32"])
    forward = (
        "import numpy as np, tensorflow as tf; from ckptkit.topology import archs; from ckptkit.core.compat import slim; slim()\n"
        "tf1 = tf.compat.v1; g = tf.Graph()\n"
        "with g.as_default():\n"
        " x = tf1.placeholder(tf.float32, [None, 224, 224, 3]); y = archs.builder('resnet_v1_50', 1000)(x)\n"
        " s = tf1.Session(); tf1.train.Saver().restore(s, %r); d = np.load(%r)\n"
        " [s.run(y, {x: d[i:i + 32]}) for i in range(0, len(d), 32)]\n") % (prefix, os.path.join(data, "x.npy"))
    base = measure(script(forward))
    rows.append((f"recalibrate resnet_v1_50 224px, {n} samples vs TF forward pass", ours, base))


def bench_startup(rows: list) -> None:
    prefix = resnet_ckpt()  # with the training .meta save_model writes beside it
    rows.append(("ckptkit --help vs python -c pass", measure(CKPTKIT + ["--help"], reps=5),
                 measure(script("pass"), reps=5)))
    tf_import = measure(script("import tensorflow"), reps=3)
    rows.append(("inspect resnet_v1_50 --no-meta (TF-free bundle reader) vs import tensorflow",
                 measure(CKPTKIT + ["inspect", prefix, "--no-meta"], reps=5), tf_import))
    rows.append(("inspect resnet_v1_50 with its .meta vs import tensorflow",
                 measure(CKPTKIT + ["inspect", prefix], reps=3), tf_import))


# issue #15's targets: label prefix -> (time ratio, memory ratio, seconds) limits (None: no target)
TARGETS = {
    "to-onnx resnet_v1_50": (0.25, 0.25, None),
    "fold vgg_16_bn": (None, 1.3, None),
    "recalibrate resnet_v1_50": (1.1, None, None),
    "inspect resnet_v1_50 --no-meta": (None, None, 0.5),
    "inspect resnet_v1_50 with": (None, None, 0.5),
}


def verdict(label: str, ours, base) -> str:
    """'met' or what is missed by how much, against TARGETS."""
    limits = next((v for k, v in TARGETS.items() if label.startswith(k)), None)
    if limits is None:
        return ""
    time_ratio, memory_ratio, seconds = limits
    missed = []
    if time_ratio is not None and ours[0] / base[0] > time_ratio:
        missed.append(f"time {ours[0] / base[0]:.2f}x > {time_ratio}x")
    if memory_ratio is not None and ours[1] / base[1] > memory_ratio:
        missed.append(f"memory {ours[1] / base[1]:.2f}x > {memory_ratio}x")
    if seconds is not None and ours[0] > seconds:
        missed.append(f"{ours[0]:.2f} s > {seconds} s")
    return "missed: " + "; ".join(missed) if missed else "met"


def device() -> str:
    """The devices TensorFlow (and so ckptkit's recalibration) runs on here."""
    code = "from ckptkit.commands.recalibrate import resolve_devices; print(','.join(resolve_devices()))"
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() or "unknown"


BENCHES = {"startup": bench_startup, "fold": bench_fold, "to-onnx": bench_to_onnx, "recalibrate": bench_recalibrate,
           "to-tflite": bench_to_tflite, "sizes": bench_sizes}


def main(names: list[str]) -> None:
    os.makedirs(WORK, exist_ok=True)
    rows: list = []
    for name in names or list(BENCHES):
        print(f"running {name} ...", flush=True)
        BENCHES[name](rows)
    lines = []
    if rows:
        lines += ["| benchmark | ckptkit s | baseline s | time ratio | ckptkit peak MB | baseline peak MB | memory ratio "
                  "| target |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, (t, m), (bt, bm) in rows:
            lines.append(f"| {label} | {t:.2f} | {bt:.2f} | {t / bt:.2f} | {m:.0f} | {bm:.0f} | {m / bm:.2f} "
                         f"| {verdict(label, (t, m), (bt, bm))} |")
        lines += ["", "Where ckptkit's time goes (median seconds per phase; rest = Python start-up and all not in a "
                      "phase):", ""]
        lines += [f"- {label}: {breakdown(ours)}" for label, ours, _ in rows if ours.phases]
    lines += sizes_table()
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
        f.write(f"\n## {time.strftime('%Y-%m-%d %H:%M')} on {machine}, device {device()} (reps {REPS})\n\n"
                f"`{' '.join(['bench/run.py', *names])}`\n\n{table}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
