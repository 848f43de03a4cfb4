"""Hugging Face checkpoint files without transformers: config.json and safetensors, read and written.

Only the standard library, numpy and torch are needed, so the training tools run on Debian's
python3-torch. Tensors are read whole into memory (the models these tools train are small; a
7B model needs RAM for its weights in f32 while training routers, which is what training needs
anyway).
"""
import json
import os
import struct

import numpy as np
import torch

_DTYPES = {
    'F32': (torch.float32, 4),
    'F16': (torch.float16, 2),
    'BF16': (torch.bfloat16, 2),
}
_NAMES = {v[0]: k for k, v in _DTYPES.items()}


def read_safetensors(path):
    """Returns {name: tensor} from one safetensors file (F32, F16 or BF16 tensors)."""
    with open(path, 'rb') as f:
        data = f.read()
    if len(data) < 8:
        raise ValueError(f'{path}: shorter than a safetensors header')
    (n,) = struct.unpack('<Q', data[:8])
    if 8 + n > len(data):
        raise ValueError(f'{path}: header length {n} runs past the end of the file')
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == '__metadata__':
            continue
        if e['dtype'] not in _DTYPES:
            raise ValueError(f'{path}: tensor {name} has dtype {e["dtype"]}; F32, F16 and BF16 are supported')
        dtype, size = _DTYPES[e['dtype']]
        a, b = e['data_offsets']
        count = int(np.prod(e['shape'])) if e['shape'] else 1
        if b - a != count * size or base + b > len(data):
            raise ValueError(f'{path}: tensor {name} has a bad byte range')
        raw = torch.frombuffer(bytearray(data[base + a:base + b]), dtype=torch.uint8)
        out[name] = raw.view(dtype).reshape(e['shape']).clone()
    return out


def write_safetensors(path, tensors, metadata=None):
    """Writes {name: tensor} (contiguous, F32/F16/BF16) with names sorted, as safetensors does."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype not in _NAMES:
            raise ValueError(f'tensor {name}: dtype {t.dtype} cannot be written')
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b''
        header[name] = {'dtype': _NAMES[t.dtype], 'shape': list(t.shape), 'data_offsets': [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header['__metadata__'] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header, separators=(',', ':')).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def read_model_tensors(model_dir):
    """All tensors of a model folder: model.safetensors, or the shards its index names."""
    single = os.path.join(model_dir, 'model.safetensors')
    if os.path.exists(single):
        return read_safetensors(single)
    index = os.path.join(model_dir, 'model.safetensors.index.json')
    if not os.path.exists(index):
        raise FileNotFoundError(f'{model_dir}: neither model.safetensors nor model.safetensors.index.json exists')
    with open(index) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
    out = {}
    for name in files:
        out.update(read_safetensors(os.path.join(model_dir, name)))
    return out


def read_config(model_dir):
    with open(os.path.join(model_dir, 'config.json')) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write('\n')
