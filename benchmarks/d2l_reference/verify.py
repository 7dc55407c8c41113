"""d2l's printed test accuracies for the modern-CNN chapter, read from the executed notebooks' history.

Why: the configs cite d2l's accuracy, and the only place d2l prints one is the PyTorch notebooks its
build executed (github.com/d2l-ai/d2l-pytorch-colab, folder chapter_convolutional-modern/). Each
distinct training output in a notebook's history is one fresh build; this script walks every
commit, reads the "loss ..., train acc ..., test acc ..." line that d2l's train_ch6 printed, and the
settings (lr, num_epochs, batch_size, resize) from the code cells before it, and prints a Markdown
table of count / min / median / max / newest per run with the dates.

    git clone https://github.com/d2l-ai/d2l-pytorch-colab
    python benchmarks/d2l_reference/verify.py d2l-pytorch-colab > benchmarks/d2l_reference/table.md

The v1.0 notebooks (from 2022-07 on) train with d2l.Trainer and print no accuracy, so the runs found
end there. Only the standard library and git are needed.
"""
import json
import re
import statistics
import subprocess
import sys

FOLDER = "chapter_convolutional-modern"
# (notebook, index of the train_ch6 call within it, the run's name in the table)
RUNS = [
    ("alexnet", 0, "alexnet"),
    ("vgg", 0, "vgg"),
    ("nin", 0, "nin"),
    ("googlenet", 0, "googlenet"),
    ("batch-norm", 0, "batchnorm, from scratch"),
    ("batch-norm", 1, "batchnorm, concise"),
    ("resnet", 0, "resnet"),
    ("densenet", 0, "densenet"),
]
PRINTED = re.compile(r"loss ([\d.]+|nan), train acc ([\d.]+), test acc ([\d.]+)")
SETTING = {
    "lr": re.compile(r"\blr\b"),
    "num_epochs": re.compile(r"\bnum_epochs\b"),
    "batch_size": re.compile(r"\bbatch_size\b"),
}
RESIZE = re.compile(r"resize\s*=\s*(\d+)")


def git(repo, *args):
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout


def assignments(source, known):
    """Update `known` from tuple or single assignments like `a, b = 0.1, 10` in one code cell."""
    for line in source.splitlines():
        if "=" not in line or "==" in line or line.lstrip().startswith("#"):
            continue
        left, right = line.split("=", 1)
        names = [n.strip() for n in left.split(",")]
        values = [v.strip() for v in right.split("#")[0].split(",") if v.strip()]
        if len(names) == len(values) and all(n in SETTING for n in names):
            for name, value in zip(names, values):
                try:
                    known[name] = float(value) if "." in value else int(value)
                except ValueError:
                    pass


def runs_in(notebook):
    """Each train_ch6 call's (settings, printed line, whole output text), in notebook order."""
    known, found = {}, []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = "".join(cell.get("source", []))
        assignments(source, known)
        resize = RESIZE.search(source)
        if resize:
            known["resize"] = int(resize.group(1))
        if "train_ch6(" not in source:
            continue
        text = "".join("".join(o.get("text", "")) for o in cell.get("outputs", []))
        printed = PRINTED.search(text)
        if printed:
            found.append((dict(known), printed.groups(), text))
    return found


def builds(repo, name, index):
    """One entry per distinct output of this run, at the first commit that has it.

    The history re-uploads older outputs (two builds alternate for weeks in 2020), so a build is
    an output text (printed line and examples/sec) not seen in any earlier commit.
    """
    path = f"{FOLDER}/{name}.ipynb"
    log = git(repo, "log", "--reverse", "--format=%H %cs", "--", path).split("\n")
    out, seen = [], set()
    for entry in filter(None, log):
        commit, date = entry.split()
        try:
            notebook = json.loads(git(repo, "show", f"{commit}:{path}"))
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        found = runs_in(notebook)
        if len(found) <= index:
            continue
        settings, (loss, train_acc, test_acc), text = found[index]
        if text not in seen:
            out.append(dict(commit=commit[:7], date=date, test_acc=float(test_acc), **settings))
        seen.add(text)
    return out


def row(label, entries):
    accs = [e["test_acc"] for e in entries]
    newest = entries[-1]
    settings = f"{newest.get('lr')}, {newest.get('batch_size')}, {newest.get('resize', 28)}"
    return (f"| {label} | {settings} | {newest.get('num_epochs')} | {len(accs)} | {min(accs):.3f} | "
            f"{statistics.median(accs):.3f} | {max(accs):.3f} | {newest['test_acc']:.3f} | "
            f"{entries[0]['date']} .. {newest['date']} ({newest['commit']}) |")


def main(repo):
    head = git(repo, "log", "-1", "--format=%H %cs").split()
    print(f"d2l's printed test accuracy after train_ch6, per build: github.com/d2l-ai/d2l-pytorch-colab,"
          f" {FOLDER}/, history up to {head[0][:7]} ({head[1]}); made by benchmarks/d2l_reference/verify.py."
          " A build is a training output (printed line and examples/sec) that no earlier commit has;"
          " each ran 10 epochs on the full Fashion-MNIST.\n")
    print("| run | lr, batch, resize (newest build) | epochs | builds | min | median | max | newest | dates (newest commit) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, index, label in RUNS:
        entries = builds(repo, name, index)
        changed = {(e.get("lr"), e.get("batch_size"), e.get("resize"), e.get("num_epochs")) for e in entries}
        print(row(label, entries) + (f" settings varied: {sorted(changed, key=str)}" if len(changed) > 1 else ""))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else ".")
