"""Runs `mlmkit train` in this process and SIGKILLs it at the n-th call of one function."""
import importlib
import io
import os
import shutil
import signal
import sys

import torch

from mlmkit.cli.main import main

loop_module = importlib.import_module("mlmkit.training.loop")

point, nth = sys.argv[1], int(sys.argv[2])
calls = {"loss": 0, "torch.save": 0, "os.replace": 0, "rmtree": 0}


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
        return real(*args, **kw)
    return wrapped


loop_module.masked_lm_loss = counted("loss", loop_module.masked_lm_loss)
torch.save = counted("torch.save", torch.save, torn=True)
os.replace = counted("os.replace", os.replace)
shutil.rmtree = counted("rmtree", shutil.rmtree)
code = main(sys.argv[3:])
print("calls", calls, file=sys.stderr)
sys.exit(code)
