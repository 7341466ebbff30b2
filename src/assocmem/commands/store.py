"""``assocmem store DIR --out FILE``: store a folder of the user's images as a memory bank (an
``ImageMemory``, the modern Hopfield network of KH eq. 13-16 with the image size and file names),
written atomically with checksums by ``assocmem.bank``; ``assocmem recall`` reads it.
"""
from __future__ import annotations

from pathlib import Path

from . import _args as A


def register(sub):
    p = sub.add_parser(
        "store",
        help="store a folder of images as a memory bank",
        description="Read every image in DIR (PNG, JPEG, BMP, GIF, TIFF, ...; all of one size unless --size is given), "
        "turn each into a pattern of +-1 pixels (or grey levels with --gray) and write a memory bank FILE that "
        "`assocmem recall --memory FILE` uses. Files without an image suffix are skipped; an image that cannot be "
        "read is an error, and nothing is written.",
    )
    p.add_argument("dir", metavar="DIR", help="folder of images (not searched recursively)")
    p.add_argument("--out", required=True, metavar="FILE", help="memory bank to write (a .safetensors file)")
    p.add_argument("--size", default=None, metavar="WxH", type=A.image_size(),
                   help="resize every image to W x H pixels (default: keep; all must match); refused when the "
                        "folder's images at that size would not fit in the memory available")
    p.add_argument("--gray", action="store_true", help="keep grey levels in [-1, 1] instead of +-1 pixels")
    p.add_argument("--threshold", type=A.fraction(), default=0.5, help="grey level in [0, 1] above which a pixel is +1 (default 0.5)")
    p.add_argument("--beta", type=A.positive(), default=0.8, help="inverse temperature stored with the bank (default 0.8)")
    p.set_defaults(func=run)
    return p


# bytes per pixel of each stored image (its float32 pattern in the list and in the stacked bank) and
# of the one image being read (float64 grey levels, 8-bit resize, float64 result, float32 pattern)
BYTES_PER_STORED_PIXEL = 8
BYTES_PER_PIXEL_IN_FLIGHT = 8 + 1 + 8 + 4


def load_folder(folder, size: tuple[int, int] | None = None, gray: bool = False, threshold: float = 0.5):
    """Patterns (K, H*W), (H, W), file names, and the names of skipped non-image files of a folder.

    Refuses (ValueError) a folder whose images would not fit in the memory available, before
    reading any image when ``size`` is given, else after reading the first one (which gives the size)."""
    import numpy as np
    import torch
    from PIL import Image

    from ..data import IMAGE_SUFFIXES, image_to_pattern, read_image

    d = Path(folder)
    if not d.exists():
        raise FileNotFoundError(f"DIR: no such folder {str(d)!r}")
    if not d.is_dir():
        raise ValueError(f"DIR: {str(d)!r} is not a folder; expected a folder of images")
    entries = sorted(p for p in d.iterdir() if not p.name.startswith(".") and p.is_file())
    images = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES]
    skipped = [p.name for p in entries if p.suffix.lower() not in IMAGE_SUFFIXES]
    if not images:
        what = f"only files that are not images ({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})" if skipped else "no files"
        raise ValueError(f"DIR: {str(d)!r} holds {what}; expected image files such as PNGs")
    def check_fits(w: int, h: int, option: str) -> None:
        pixels = w * h
        A.memory(option, len(images) * pixels * BYTES_PER_STORED_PIXEL + pixels * BYTES_PER_PIXEL_IN_FLIGHT,
                 f"storing {len(images)} image(s) of {w}x{h} pixels")

    if size is not None:
        check_fits(*size, "--size")
    patterns, shape = [], None
    for p in images:
        grey, _known = read_image(p, name="DIR")
        if size is None and shape is None:
            check_fits(grey.shape[1], grey.shape[0], "DIR")
        if size is not None:
            w, h = size
            im = Image.fromarray(np.round(grey * 255).astype(np.uint8), mode="L").resize((w, h), Image.LANCZOS)
            grey = np.asarray(im, dtype=np.float64) / 255.0
        if shape is None:
            shape = grey.shape
        elif grey.shape != shape:
            raise ValueError(
                f"DIR: {p.name} is {grey.shape[1]}x{grey.shape[0]} pixels but {images[0].name} is {shape[1]}x{shape[0]}; "
                "expected images of one size (or pass --size WxH to resize them)"
            )
        patterns.append(image_to_pattern(grey, binary=not gray, threshold=threshold))
    return torch.stack(patterns), shape, [p.name for p in images], skipped


def run(args) -> int:
    from ..data import ImageMemory

    size, threshold, beta = args.size, args.threshold, args.beta
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out: {str(out)!r} is a folder; expected a file name for the memory bank")
    if not out.absolute().parent.is_dir():
        raise FileNotFoundError(f"--out: the folder {str(out.absolute().parent)!r} does not exist")
    xi, (h, w), names, skipped = load_folder(args.dir, size=size, gray=args.gray, threshold=threshold)
    model = ImageMemory(xi, height=h, width=w, names=names, binary_pixels=not args.gray, beta=beta)
    model.save(out, layout="file")
    kind = "grey-level" if args.gray else "+-1"
    print(f"stored {len(names)} images of {w}x{h} pixels ({kind} patterns, N_f = {w * h}) in {out}")
    if skipped:
        print(f"skipped {len(skipped)} file(s) without an image suffix: {', '.join(skipped[:5])}{' ...' if len(skipped) > 5 else ''}")
    return 0
