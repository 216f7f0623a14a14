"""The --fleet golem options, declared once for every command that rents nodes (run, bench, pilot)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Image = Annotated[
    str | None,
    typer.Option(help="golem: image tag, sha3-224 hash or .gvmi URL [default: the image lock file]"),
]
ImageHash = Annotated[str | None, typer.Option("--image-hash", help="golem: sha3-224 of the .gvmi file an --image URL names")]
Budget = Annotated[float | None, typer.Option(help="golem: GLM for the whole run, never exceeded")]
MaxPrice = Annotated[float | None, typer.Option(help="golem: most a node may cost per hour")]
Subnet = Annotated[str | None, typer.Option(help="golem: subnet tag [default: public]")]
PaymentNetwork = Annotated[
    str | None, typer.Option(help="golem: holesky, hoodi or sepolia (testnets), polygon, amoy or mainnet [default: holesky]")
]
MinVram = Annotated[float | None, typer.Option(help="golem: least GPU memory a provider must offer")]
RegionMap = Annotated[Path | None, typer.Option(help="golem: YAML/JSON file mapping provider id -> region")]
LabelRegions = Annotated[bool, typer.Option("--label-regions", help="golem: deal the suite's regions to nodes as labels")]
CpuOnly = Annotated[bool, typer.Option("--cpu-only", help="golem: rent CPU providers (runtime vm), not GPU ones")]
