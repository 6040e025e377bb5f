"""Runs `mlmkit train` in this process and SIGKILLs it at the n-th call of one function; point
"export" kills in the export: at its start with n = 0 (the final checkpoint is complete, no
file of the model is written yet), else at the n-th rename made since it started."""
import importlib
import io
import os
import shutil
import signal
import sys

import torch

from mlmkit.cli.main import main

loop_module = importlib.import_module("mlmkit.training.loop")
export_module = importlib.import_module("mlmkit.training.export")

point, nth = sys.argv[1], int(sys.argv[2])
calls = {"loss": 0, "torch.save": 0, "os.replace": 0, "rmtree": 0, "export": 0}
exporting = []


def kill_at(name):
    if name == point and calls[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)


def counted(name, real, torn=False):
    def wrapped(*args, **kw):
        calls[name] += 1
        if name == point and calls[name] == nth:
            if torn:  # half of the file on disk, then the kill
                buf = io.BytesIO()
                real(args[0], buf)
                with open(args[1], "wb") as fh:
                    fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
        if name == "os.replace" and exporting:
            calls["export"] += 1
            kill_at("export")
        return real(*args, **kw)
    return wrapped


def export_started(real):
    def wrapped(*args, **kw):
        exporting.append(True)
        kill_at("export")  # n = 0: before the export's first write
        return real(*args, **kw)
    return wrapped


loop_module.masked_lm_loss = counted("loss", loop_module.masked_lm_loss)
torch.save = counted("torch.save", torch.save, torn=True)
os.replace = counted("os.replace", os.replace)
shutil.rmtree = counted("rmtree", shutil.rmtree)
export_module.export_model = export_started(export_module.export_model)
code = main(sys.argv[3:])
print("calls", calls, file=sys.stderr)
sys.exit(code)
