"""Quick start: mask a generated Sentinel-2-like scene lazily and print class fractions.

    python examples/quickstart.py
"""

import numpy as np

import xcloud
from xcloud.synthetic import synthetic_scene

scene = synthetic_scene(1024, seed=3).chunk({"y": 512, "x": 512})  # lazy, like odc-stac
mask = scene.cloudmask.predict(model="ukis-6b-l1c")  # nothing computed yet
print(mask)
values, counts = np.unique(mask.compute().values, return_counts=True)
names = dict(zip(mask.attrs["flag_values"], mask.attrs["flag_meanings"].split(), strict=True))
for value, count in zip(values, counts, strict=True):
    print(f"{names[int(value)]:<14} {100 * count / mask.size:5.1f} %")
print("models loaded in this process:", xcloud.load_counts())
