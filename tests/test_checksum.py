"""cmf.checksum.content_digest: equal for equal dtype, shape and bytes, whatever the layout."""

import numpy as np

from cmf.checksum import content_digest


def test_content_digest_keys_dtype_shape_and_bytes():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert content_digest(a) == content_digest(a.copy())
    assert content_digest(a) == content_digest(np.asfortranarray(a))  # layout does not matter
    assert content_digest(a) != content_digest(a.reshape(4, 3))
    assert content_digest(a) != content_digest(a.view(np.int32))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(100))
    assert content_digest(a) != content_digest(b)
    n1, n2 = np.array([np.nan], np.float32), np.array([np.nan], np.float32)
    n2.view(np.uint32)[0] ^= 1  # another NaN payload
    assert content_digest(n1) != content_digest(n2)
    assert len(content_digest(np.zeros((0, 3)))) == 16
