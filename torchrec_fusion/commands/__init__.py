"""The commands of the ``torchrec-fusion`` program, by name: adding one is a file and a registry line."""

from torchrec_fusion.commands.base import Command
from torchrec_fusion.commands.data import Data
from torchrec_fusion.commands.evaluate import Evaluate
from torchrec_fusion.commands.explain import Explain
from torchrec_fusion.commands.export import Export
from torchrec_fusion.commands.fuse import Fuse
from torchrec_fusion.commands.recommend import Recommend
from torchrec_fusion.commands.serve import Serve
from torchrec_fusion.commands.train import Train
from torchrec_fusion.registry import Registry

COMMANDS: Registry[Command] = Registry("command")
COMMANDS.register("train", Train())
COMMANDS.register("evaluate", Evaluate())
COMMANDS.register("recommend", Recommend())
COMMANDS.register("export", Export())
COMMANDS.register("explain", Explain())
COMMANDS.register("fuse", Fuse())
COMMANDS.register("data", Data())
COMMANDS.register("serve", Serve())

__all__ = ["COMMANDS", "Command"]
