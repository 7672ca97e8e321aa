"""Argument groups several ``seglab`` sub-commands share (predict, evaluate, serve)."""

from __future__ import annotations

import argparse

__all__ = ["add_exported_arguments", "add_tta_arguments"]


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the class probabilities of the image, its mirror image "
                             "and rescaled views (default scales 0.75,1,1.25)")
    parser.add_argument("--tta-scales", metavar="S,S,...",
                        help="TTA scales relative to the trained size, e.g. 0.75,1,1.25 (implies --tta)")


def add_exported_arguments(parser: argparse.ArgumentParser, backends: tuple[str, ...], help: str) -> None:
    parser.add_argument("--backend", choices=backends, help=help)
    parser.add_argument("--precision", choices=("auto", "f32", "bf16"), default="auto",
                        help="float precision: OpenVINO's (auto: bf16 where the CPU has it natively, else f32); "
                             "PyTorch's where it applies (auto: bf16 where the CPU has it natively and the weights "
                             "record that bf16 keeps their val labels, else fp32; f32; bf16: bf16 autocast)")
