"""The ``seglab`` command. Every sub-command's ``--help`` ends with an example.

User mistakes (:class:`SeglabError`) are printed as one paragraph and exit with status 2;
an interrupted training exits with 130 after writing a resumable checkpoint.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

from seglab.apps.cli_args import add_exported_arguments, add_tta_arguments
from seglab.core.errors import SeglabError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seglab", description="Image segmentation centred on SegNet: train, evaluate, "
                                "predict.", epilog="Start here: seglab quickstart",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, epilog=f"example:\n  {example}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    t = add("train", "Train a model from a YAML recipe, with --section.key value overrides.",
            "seglab train configs/segnet_basic_camvid.yaml --data.root ../shared/data/camvid --train.epochs 2")
    t.add_argument("recipe", help="YAML recipe (configs/*.yaml)")
    t.epilog += ("\n\nany config key can be overridden, e.g. --train.lr 0.01 --data.image_size [180,240] "
                 "--model.kwargs.upsample bilinear --train.resume runs/x/last.pt")

    e = add("evaluate", "Evaluate a checkpoint with the SegNet protocol (G, C, per-class and mean IoU, fwIoU, BF).",
            "seglab evaluate runs/camvid/best.pt --data.root ../shared/data/camvid --split val")
    e.add_argument("checkpoint", help="a checkpoint, a seglab weights file or the name of trained weights "
                                      "(`seglab weights`)")
    e.add_argument("--split", default="val", help="split to score (default: val)")
    e.add_argument("--out", help="JSON file for the results (default: eval_<split>.json beside the checkpoint)")
    e.add_argument("--batch-size", type=int, default=2)
    e.add_argument("--no-bf", action="store_true", help="skip boundary F1 (faster)")
    e.add_argument("--bf-protocol", choices=("fast", "paper"),
                   help="BF rules: fast (void masked, distance matching) or paper (the SegNet script's: no void "
                        "mask, one-to-one matching; slower); default: the checkpoint's train.bf_protocol")
    e.add_argument("--device", default="auto")
    e.add_argument("--mc-samples", type=int, default=0,
                   help="Monte-Carlo dropout samples (Bayesian models): also reports calibration (ECE)")
    e.add_argument("--onnx", metavar="FILE",
                   help="score this exported .onnx file (e.g. the int8 one from `seglab export --int8`, or the "
                        ".xml of --quantizer nncf) in onnxruntime or OpenVINO instead of the checkpoint's PyTorch "
                        "weights; the checkpoint still supplies the data set, classes and resolution")
    add_exported_arguments(e, ("onnxruntime", "openvino"), "the runtime for --onnx (default: openvino for .xml)")
    add_tta_arguments(e)

    pr = add("predict", "Predict images, folders or globs to label, colour and overlay PNGs.",
             "seglab predict runs/camvid/best.pt street.png more_images/ 'shots/*.jpg' --out predictions/")
    pr.add_argument("checkpoint", help="a checkpoint, a seglab weights file or the name of trained weights "
                                       "(`seglab weights`, e.g. unet.isbi2012)")
    pr.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    pr.add_argument("--out", required=True, help="output folder")
    pr.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the colour mask")
    pr.add_argument("--device", default="auto")
    add_exported_arguments(pr, ("torch", "onnxruntime", "openvino"),
                            "onnxruntime and openvino take a file written by `seglab export` (.onnx, or the "
                            "OpenVINO .xml of --quantizer nncf) instead of a checkpoint, or trained weights that "
                            "ship an int8 OpenVINO model (default auto: that model where OpenVINO is installed and "
                            "no PyTorch-only option is given, an exported file's own runtime, else torch)")
    pr.add_argument("--no-fast", action="store_true", help="plain eager model instead of the inference fast path")
    pr.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"),
                    help="overlap-tile inference with mirror padding (automatic for unet_valid)")
    pr.add_argument("--tile-overlap", type=int, default=32)
    pr.add_argument("--mc-samples", type=int, default=0,
                    help="Monte-Carlo dropout samples (Bayesian models): also writes uncertainty heat maps")
    add_tta_arguments(pr)
    pr.add_argument("--task", choices=("semantic", "instance"), help="check the checkpoint is of this task")
    pr.add_argument("--score-threshold", type=float, help="instance checkpoints: minimum score (default 0.5)")
    pr.add_argument("--video", action="store_true", help="the inputs are videos (default: by extension, e.g. .mp4)")
    pr.add_argument("--save-frames", action="store_true", help="videos: also write each frame's label PNG")
    pr.add_argument("--every-n", type=int, default=1, help="videos: segment every n-th frame, reuse labels between")
    pr.add_argument("--max-frames", type=int, help="videos: stop after this many frames")

    x = add("export", "Export a checkpoint to ONNX, check parity with PyTorch, optionally quantize to int8.",
            "seglab export runs/camvid/best.pt --format onnx --out segnet.onnx --int8 --data.root ../shared/data/camvid")
    x.add_argument("checkpoint")
    x.add_argument("--format", choices=("onnx",), default="onnx")
    x.add_argument("--out", help="output file (default: the checkpoint's name with .onnx)")
    x.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"), help="example input size (instance: the fixed size)")
    x.add_argument("--int8", action="store_true", help="also write an int8 model calibrated on training images")
    x.add_argument("--quantizer", choices=("onnxruntime", "nncf"), default="onnxruntime",
                   help="--int8 by onnxruntime (static QDQ, NAME_int8.onnx) or NNCF (OpenVINO IR, NAME_int8.xml)")
    x.add_argument("--calibration-images", type=int, default=16)

    b = add("benchmark", "Time models and execution paths in one run (latency, images/s, GFLOP/s, memory).",
            "seglab benchmark --models segnet segnet_basic --sizes 360 480 --json bench.json")
    b.add_argument("--models", nargs="*", help="registered model names (default: the standard set)")
    b.add_argument("--sizes", type=int, nargs="+", default=[360, 480], metavar="H W", help="pairs of H W")
    b.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    b.add_argument("--paths", nargs="*", help="execution paths, e.g. eager fast onnxruntime quantized, or "
                   "training paths train_eager train_cl train_bf16 train_bf16_cl train_engine")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--threads", type=int)
    b.add_argument("--train", action="store_true", help="also time training steps (train_eager, train_engine)")
    b.add_argument("--json", help="write the rows as JSON")

    m = add("models", "List registered models with parameter counts and GFLOPs.",
            "seglab models --size 360 480\n  seglab models segnet unet_valid")
    m.add_argument("names", nargs="*", metavar="NAME", help="only these models (default: all)")
    m.add_argument("--size", type=int, nargs=2, default=[360, 480], metavar=("H", "W"))
    m.add_argument("--num-classes", type=int, default=11)
    m.add_argument("--no-flops", action="store_true", help="skip the (slower) FLOP count")

    d = add("data", "Inspect or download a data set.",
            "seglab data check ../shared/data/camvid\n  seglab data list\n  seglab data download camvid data/camvid")
    dsub = d.add_subparsers(dest="data_command", metavar="ACTION")
    dc = dsub.add_parser("check", help="Report class histogram and problems; non-zero exit on errors.",
                         description="Report class histogram, missing masks, size mismatches, bad label values.",
                         epilog="example:\n  seglab data check ../shared/data/camvid --num-classes 11",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dc.add_argument("path")
    dc.add_argument("--num-classes", type=int)
    dc.add_argument("--split", help="only this split")
    dc.add_argument("--ignore-index", type=int, help="mask value marking void pixels (default: 11 for CamVid, else 255)")
    dsub.add_parser("list", help="List the data sets `seglab data download` fetches: size, licence, content.")
    dd = dsub.add_parser("download", help="Download, verify and extract a data set into DIR, then check it.",
                         description="Download (resumable), verify the checksum, extract atomically, run data check.",
                         epilog="example:\n  seglab data download camvid data/camvid",
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dd.add_argument("name", metavar="NAME", help="data set name (see `seglab data list`)")
    dd.add_argument("dir", metavar="DIR", help="folder to create (must not exist or be empty, unless --force)")
    dd.add_argument("--force", action="store_true", help="download again and replace what DIR holds")

    w = add("weights", "List the trained weights that ship with seglab (with val metrics), or pack a checkpoint as one.",
            "seglab weights\n  seglab weights pack runs/isbi/best.pt --name unet.isbi2012 --recipe configs/unet_isbi.yaml")
    wsub = w.add_subparsers(dest="weights_command", metavar="ACTION")
    wp = wsub.add_parser("pack", help="Write a checkpoint as fp16 trained weights with metadata and val metrics.")
    wp.add_argument("checkpoint")
    wp.add_argument("--name", required=True, help="<model>.<tag>, e.g. segnet_basic.camvid")
    wp.add_argument("--out-dir", help="weights folder (default: the installed package's seglab/weights)")
    wp.add_argument("--recipe", help="the recipe file it was trained with, recorded in the metadata")
    wp.add_argument("--commit", help="the commit it was trained at (default: git HEAD)")
    wp.add_argument("--url", help="where the file will be published, for weights too large to ship (> 4 MB)")
    wp.add_argument("--split", default="val", help="split to score it on (default: val)")
    wp.add_argument("--also-split", action="append", default=[], metavar="SPLIT",
                    help="another split to score and record, e.g. train:0001TP (a sequence held out of training)")
    wp.add_argument("--no-int8", action="store_true",
                    help="skip the int8 OpenVINO model (made, checked and shipped when it passes, where OpenVINO is installed)")
    wp.add_argument("--infer-scale", type=float, metavar="S", help="run the packed model at data.image_size x S "
                    "(data.infer_scale), chosen on a held-out split with `seglab evaluate --data.infer_scale S`")

    from seglab.apps.serve.settings import add_serve_arguments  # argparse only: keeps --help fast

    add_serve_arguments(add("serve", "Serve a model over HTTP: a web page at /, POST /v1/segment, health, metrics, /docs.",
                            "seglab serve unet.isbi2012 --port 8000\n  seglab serve best.pt --host 0.0.0.0 --api-key KEY"))

    q = add("quickstart", "Train SegNet-Basic (--task instance: a CPU Mask R-CNN) on built-in synthetic road scenes, "
            "evaluate it and draw overlays.", "seglab quickstart --out-dir runs\n  seglab quickstart --task instance")
    q.add_argument("--out-dir", default="runs")
    q.add_argument("--task", choices=("semantic", "instance"), default="semantic", help="what the model predicts")
    q.add_argument("--epochs", type=int, help="override the number of epochs")
    return p


def _cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.core.config import load_config
    from seglab.engine.trainer import train

    result = train(load_config(args.recipe, extra))
    if result.interrupted:
        return 130
    if result.main_process:
        print(f"seglab: done. Run folder: {result.run_dir}  (best: {result.best_checkpoint}, last: {result.last_checkpoint})")
    return 0


def _cmd_evaluate(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.evaluate import evaluate_checkpoint
    from seglab.core.atomic import atomic_write_text
    from seglab.engine.logging import dumps
    from seglab.metrics import format_metrics_table
    from seglab.ops.tta import TTA

    tta = TTA.from_cli(args.tta, args.tta_scales)
    results = evaluate_checkpoint(args.checkpoint, extra, args.split, args.batch_size, not args.no_bf, args.device,
                                  mc_samples=args.mc_samples, onnx=args.onnx, tta=tta, bf_protocol=args.bf_protocol,
                                  backend=args.backend, precision=args.precision)
    print(format_metrics_table(results, results["class_names"]))
    if tta is not None:
        print(f"Test-time augmentation: {tta.views} views (scales {', '.join(f'{s:g}' for s in tta.scales)}"
              f"{', each also flipped' if tta.flip else ''}).")
    if args.mc_samples:
        print(f"Monte-Carlo dropout, {args.mc_samples} samples: expected calibration error {100 * results['ece']:.2f} %")
        for b in results["accuracy_by_uncertainty"]:
            if b["pixels"]:
                print(f"  entropy {b['entropy_from']:.1f}-{b['entropy_to']:.1f} of max: "
                      f"{b['pixels']:>9} px, accuracy {100 * b['accuracy']:.1f} %")
    source = Path(args.checkpoint)  # trained weights by name: the results go to the current folder
    default = source.parent / f"eval_{args.split}.json" if source.is_file() else Path(f"eval_{source}_{args.split}.json")
    out = Path(args.out) if args.out else default
    atomic_write_text(out, dumps(results, indent=2))
    print(f"seglab: metrics written to {out}")
    return 0


def _cmd_predict(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.instance_predict import predict_instances_to_files
    from seglab.apps.predict import predict_to_files
    from seglab.apps.video import is_video, predict_videos
    from seglab.inference.auto import describe_predictor, load_predictor
    from seglab.ops.tta import TTA

    _no_extra(extra)
    tta = TTA.from_cli(args.tta, args.tta_scales)
    if tta is not None and args.mc_samples:
        raise SeglabError("--tta and --mc-samples cannot be combined: choose one.")
    video = args.video or any(is_video(item) for item in args.inputs)
    # auto: a shipped int8 OpenVINO model verified on val, else PyTorch (bf16 only where verified), else fp32.
    seg = load_predictor(args.checkpoint, args.backend, device=args.device, precision=args.precision, tile=args.tile,
                         tile_overlap=args.tile_overlap, fast=not args.no_fast, tta=tta, task=args.task,
                         score_threshold=args.score_threshold,
                         torch_only="--mc-samples" if args.mc_samples else None)
    print(f"seglab: predicting with {describe_predictor(seg)}")
    if seg.task == "instance":
        if args.mc_samples or video:
            raise SeglabError(f"{'--mc-samples' if args.mc_samples else 'Video prediction'} applies to semantic "
                              f"checkpoints; {args.checkpoint!r} is an instance checkpoint. Predict images without it.")
        files = predict_instances_to_files(seg, args.inputs, args.out, args.alpha)
    elif video:
        if args.mc_samples:
            raise SeglabError("--mc-samples is for images; drop it to predict videos.")
        predict_videos(seg, args.inputs, args.out, args.alpha, forced=args.video, save_frames=args.save_frames,
                       every_n=args.every_n, max_frames=args.max_frames)
        return 0
    else:
        files = predict_to_files(seg, args.inputs, args.out, args.alpha, mc_samples=args.mc_samples)
    print(f"seglab: wrote {len(files)} files to {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.export import export_checkpoint  # semantic or instance (Mask R-CNN), by the checkpoint's task

    return export_checkpoint(args, extra)


def _cmd_benchmark(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.benchmark import format_table, run_benchmark

    _no_extra(extra)
    if len(args.sizes) % 2:
        raise SeglabError("--sizes takes pairs of H W, e.g. --sizes 360 480 180 240.")
    sizes = [tuple(args.sizes[i:i + 2]) for i in range(0, len(args.sizes), 2)]
    # train_* names are training paths (TRAIN_PATHS): naming only those times training steps alone.
    named = args.paths or []
    train_named = [p for p in named if p.startswith("train_")]
    paths = [p for p in named if not p.startswith("train_")] if named else None
    rows = run_benchmark(args.models or None, sizes, args.batch_sizes, paths, args.warmup, args.repeats, args.threads,
                         train_mode=args.train or bool(train_named), json_out=args.json,
                         train_paths=train_named or ["train_eager", "train_engine"])
    print(format_table(rows))
    return 0


def _cmd_models(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.models.complexity import count_gflops, count_parameters
    from seglab.ops.contract import runnable_size
    from seglab.models.registry import create_model, list_models, model_task

    _no_extra(extra)
    h, w = args.size
    print(f"{'model':<28}{'params (M)':>12}{f'GFLOPs @{h}x{w}':>18}")
    footnotes = []
    for name in args.names or list_models():
        model = create_model(name, args.num_classes).eval()
        params = count_parameters(model) / 1e6
        size = runnable_size(model, (h, w))
        instance = model_task(name) == "instance"  # detections, data-dependent cost: no single GFLOPs figure
        flops = "-" if args.no_flops or instance else f"{count_gflops(model, size):.1f}"
        if size != (h, w) and not args.no_flops:  # valid-convolution models: counted at the nearest size they take
            footnotes.append(f"* {name}: counted at {size[0]}x{size[1]}, the nearest input size it accepts")
            flops += "*"
        print(f"{name:<28}{params:>12.3f}{flops:>18}")
    for line in footnotes:
        print(line)
    return 0


def _cmd_data(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.data import check_dataset

    _no_extra(extra)
    if args.data_command == "list":
        from seglab.data.download import format_catalogue

        print(format_catalogue())
        return 0
    if args.data_command == "download":
        from seglab.data.download import download_dataset

        report = download_dataset(args.name, args.dir, force=args.force)
        if report is not None:
            print(report.format())
        return 0 if report is None or report.ok else 1
    if args.data_command != "check":
        raise SeglabError("Use `seglab data check PATH`, `seglab data list` or `seglab data download NAME DIR`.")
    report = check_dataset(args.path, num_classes=args.num_classes, split=args.split, ignore_index=args.ignore_index)
    print(report.format())
    return 0 if report.ok else 1


def _cmd_weights(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.weights import format_weights_table, pack_weights

    if args.weights_command == "pack":
        pack_weights(args.checkpoint, args.name, out_dir=args.out_dir, recipe=args.recipe, commit=args.commit,
                     url=args.url, overrides=extra, split=args.split, also_splits=args.also_split,
                     int8=not args.no_int8, infer_scale=args.infer_scale)
    else:
        _no_extra(extra)
        print(format_weights_table())
    return 0


def _cmd_quickstart(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.quickstart import run_quickstart

    run_quickstart(args.out_dir, extra, epochs=args.epochs, task=args.task)
    return 0


def _cmd_serve(args: argparse.Namespace, extra: list[str]) -> int:
    from seglab.apps.serve.server import run_server
    from seglab.apps.serve.settings import ServeSettings

    _no_extra(extra)
    run_server(args.model, ServeSettings.from_args(args), device=args.device, threads=args.threads,
               backend=args.backend, precision=args.precision)
    return 0


def _no_extra(extra: list[str]) -> None:
    if extra:
        raise SeglabError(f"Unrecognised arguments: {' '.join(extra)}. See --help.")


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "predict": _cmd_predict, "export": _cmd_export,
            "benchmark": _cmd_benchmark, "models": _cmd_models,
            "data": _cmd_data, "weights": _cmd_weights, "quickstart": _cmd_quickstart, "serve": _cmd_serve}


def overrides_last(argv: list[str]) -> list[str]:
    """Move ``--section.key value`` config overrides after every other argument.

    argparse takes the first bare word for a command's positional argument, so in
    ``seglab train --data.root DIR RECIPE`` it would take ``DIR`` for the recipe. Dotted keys
    name no argparse option, so each one, with its value unless written ``--key=value``, can be
    moved to the end, where argparse hands them back untouched as overrides.
    """
    rest, overrides, i = [], [], 0
    while i < len(argv):
        token = argv[i]
        if token.startswith("--") and "." in token.split("=", 1)[0]:
            n = 1 if "=" in token else 2
            overrides += argv[i : i + n]
            i += n
        else:
            rest.append(token)
            i += 1
    return rest + overrides


def parse_command_line(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``(arguments, config overrides)`` of a ``seglab`` command line, overrides in any position."""
    return _parser().parse_known_args(overrides_last(list(argv)))


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_command_line(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        _parser().print_help()
        return 0
    try:
        return COMMANDS[args.command](args, extra)
    except SeglabError as e:
        print("seglab error: " + textwrap.fill(str(e), width=100, subsequent_indent="  "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seglab: interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
