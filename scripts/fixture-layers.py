#!/usr/bin/env python3
"""scripts/fixture-layers.py — write the uncompressed layer tars of the test fixtures.

Used by scripts/fixtures; each tar is then added to an image with `umoci raw add-layer`.
Every entry has a fixed mtime (2024-01-01T00:00:00Z) and numeric owners, and the byte
stream depends only on the arguments, so the layer digests are reproducible.

  fixture-layers.py small OUTDIR         small-1.tar small-2.tar small-3.tar
  fixture-layers.py platform ARCH OUT    one layer: /etc/hoist-platform = "linux/ARCH\\n"
  fixture-layers.py big OUTDIR SEED      big-1.tar big-2.tar big-3.tar: incompressible
                                         pseudo-random data (seeded), 432 MB in 6,002 files

The `small` image, layer by layer (the tree after all three is what unpackers must give):
  1: data/{keep.txt, hard.txt (hardlink to keep.txt), doomed.txt, empty, sub/a.txt},
     etc/hoist/{hello.txt, hello-link -> hello.txt}, bin-abs-link -> /etc/hoist/hello.txt,
     home/agent/ (1000:1000) with notes.txt (1000:1000 0640),
     opaque/{old-a.txt, old-dir/x.txt}, replace-me/inner.txt,
     secret/ (root 0700) with key (root 0600),
     usr/local/bin/suid (04755), usr/local/bin/cap-bind (0755, xattr security.capability
     = cap_net_bind_service+ep), usr/local/bin/sgid-dir/ (02775)
  2: data/.wh.doomed.txt (whiteout), data/keep.txt again (same bytes) with
     data/hard2.txt hardlinked to it (docker's form of a link to a lower file),
     etc/hoist/hello.txt rewritten, opaque/new.txt then opaque/.wh..wh..opq (the opaque
     marker after its sibling: it still only hides the lower layers' children)
  3: data/.wh.sub (whiteout of a directory), etc/hoist/.wh.hello-link (of a symlink),
     replace-me as a regular file (a file replaces a directory), layer3.txt, fifo (a FIFO)
Final tree: data/{keep.txt, hard.txt, hard2.txt, empty}, no doomed.txt, no sub/; keep.txt
  and hard2.txt are one hardlink group, hard.txt is alone (it still is layer 1's inode);
  etc/hoist/hello.txt = "hello from layer 2\\n", no hello-link; opaque/ holds only new.txt;
  replace-me is a file; secret/key still root 0600 in a root 0700 dir.
"""
import io
import os
import random
import struct
import sys
import tarfile

MTIME = 1704067200  # 2024-01-01T00:00:00Z


class Layer:
    def __init__(self, path):
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)

    def _info(self, name, kind, mode, uid=0, gid=0, **kw):
        ti = tarfile.TarInfo(name)
        ti.type = kind
        ti.mode = mode
        ti.uid, ti.gid = uid, gid
        ti.uname = ti.gname = ""
        ti.mtime = MTIME
        for k, v in kw.items():
            setattr(ti, k, v)
        return ti

    def dir(self, name, mode=0o755, uid=0, gid=0):
        self.tar.addfile(self._info(name, tarfile.DIRTYPE, mode, uid, gid))

    def file(self, name, data=b"", mode=0o644, uid=0, gid=0, xattrs=None):
        if isinstance(data, str):
            data = data.encode()
        ti = self._info(name, tarfile.REGTYPE, mode, uid, gid, size=len(data))
        if xattrs:
            # Binary values travel as surrogate-escaped str (tarfile then marks the
            # header hdrcharset=BINARY and writes the raw bytes).
            ti.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape")
                for k, v in xattrs.items()
            }
        self.tar.addfile(ti, io.BytesIO(data))

    def stream(self, name, size, src, mode=0o644):
        self.tar.addfile(self._info(name, tarfile.REGTYPE, mode, size=size), src)

    def symlink(self, name, target):
        self.tar.addfile(self._info(name, tarfile.SYMTYPE, 0o777, linkname=target))

    def hardlink(self, name, target):
        self.tar.addfile(self._info(name, tarfile.LNKTYPE, 0o644, linkname=target))

    def fifo(self, name, mode=0o644):
        self.tar.addfile(self._info(name, tarfile.FIFOTYPE, mode))

    def whiteout(self, path):
        d, b = os.path.split(path)
        self.file(os.path.join(d, ".wh." + b), mode=0o600)

    def opaque(self, dirpath):
        self.file(os.path.join(dirpath, ".wh..wh..opq"), mode=0o600)

    def close(self):
        self.tar.close()


def small(out):
    keep = "keep me: shared by a hardlink\n"
    # cap_net_bind_service+ep as a VFS_CAP_REVISION_2 security.capability value.
    cap = struct.pack("<IIIII", 0x02000001, 1 << 10, 0, 0, 0)

    l1 = Layer(os.path.join(out, "small-1.tar"))
    l1.symlink("bin-abs-link", "/etc/hoist/hello.txt")
    l1.dir("data/")
    l1.file("data/keep.txt", keep)
    l1.hardlink("data/hard.txt", "data/keep.txt")
    l1.file("data/doomed.txt", "deleted by a whiteout in layer 2\n")
    l1.file("data/empty", b"")
    l1.dir("data/sub/")
    l1.file("data/sub/a.txt", "deleted with its directory in layer 3\n")
    l1.dir("etc/")
    l1.dir("etc/hoist/")
    l1.file("etc/hoist/hello.txt", "hello from layer 1\n")
    l1.symlink("etc/hoist/hello-link", "hello.txt")
    l1.dir("home/")
    l1.dir("home/agent/", 0o755, 1000, 1000)
    l1.file("home/agent/notes.txt", "owned by 1000:1000\n", 0o640, 1000, 1000)
    l1.dir("opaque/")
    l1.file("opaque/old-a.txt", "hidden by the opaque directory of layer 2\n")
    l1.dir("opaque/old-dir/")
    l1.file("opaque/old-dir/x.txt", "hidden as well\n")
    l1.dir("replace-me/")
    l1.file("replace-me/inner.txt", "gone when a file replaces the directory\n")
    l1.dir("secret/", 0o700)
    l1.file("secret/key", "top secret: root only\n", 0o600)
    l1.dir("usr/")
    l1.dir("usr/local/")
    l1.dir("usr/local/bin/")
    l1.file("usr/local/bin/suid", "#!/bin/sh\necho setuid\n", 0o4755)
    l1.file("usr/local/bin/cap-bind", "#!/bin/sh\necho capability\n", 0o755,
            xattrs={"security.capability": cap})
    l1.dir("usr/local/bin/sgid-dir/", 0o2775)
    l1.close()

    l2 = Layer(os.path.join(out, "small-2.tar"))
    l2.dir("data/")
    l2.whiteout("data/doomed.txt")
    l2.file("data/keep.txt", keep)
    l2.hardlink("data/hard2.txt", "data/keep.txt")
    l2.dir("etc/")
    l2.dir("etc/hoist/")
    l2.file("etc/hoist/hello.txt", "hello from layer 2\n")
    l2.dir("opaque/")
    l2.file("opaque/new.txt", "the only child of the opaque directory\n")
    l2.opaque("opaque")
    l2.close()

    l3 = Layer(os.path.join(out, "small-3.tar"))
    l3.dir("data/")
    l3.whiteout("data/sub")
    l3.dir("etc/")
    l3.dir("etc/hoist/")
    l3.whiteout("etc/hoist/hello-link")
    l3.fifo("fifo")
    l3.file("layer3.txt", "added in layer 3\n")
    l3.file("replace-me", "a file now, where a directory was\n")
    l3.close()


def platform(arch, out):
    l = Layer(out)
    l.dir("etc/")
    l.file("etc/hoist-platform", f"linux/{arch}\n")
    l.close()


class RandomReader:
    """`size` bytes of seeded pseudo-random (incompressible) data, read in chunks."""

    def __init__(self, rng, size):
        self.rng, self.left = rng, size

    def read(self, n=-1):
        n = self.left if n is None or n < 0 else min(n, self.left)
        self.left -= n
        return self.rng.randbytes(n)


def big(out, seed):
    rng = random.Random(int(seed))
    mib = 1 << 20
    # 1: two large files (one layer of 256 MiB: streaming whatever the layer size)
    l = Layer(os.path.join(out, "big-1.tar"))
    l.dir("bigdata/")
    l.stream("bigdata/blob-192m", 192 * mib, RandomReader(rng, 192 * mib))
    l.stream("bigdata/blob-64m", 64 * mib, RandomReader(rng, 64 * mib))
    l.close()
    # 2: 2,000 files of 64 KiB (125 MiB) in 20 directories
    l = Layer(os.path.join(out, "big-2.tar"))
    l.dir("bigdata/")
    l.dir("bigdata/medium/")
    for d in range(20):
        l.dir(f"bigdata/medium/{d:02d}/")
        for i in range(100):
            l.stream(f"bigdata/medium/{d:02d}/f{i:03d}.bin", 64 << 10, RandomReader(rng, 64 << 10))
    l.close()
    # 3: 4,000 files of 8 KiB (31 MiB) in 40 directories
    l = Layer(os.path.join(out, "big-3.tar"))
    l.dir("bigdata/")
    l.dir("bigdata/small/")
    for d in range(40):
        l.dir(f"bigdata/small/{d:02d}/")
        for i in range(100):
            l.stream(f"bigdata/small/{d:02d}/f{i:03d}.bin", 8 << 10, RandomReader(rng, 8 << 10))
    l.close()


def main(argv):
    if len(argv) == 3 and argv[1] == "small":
        small(argv[2])
    elif len(argv) == 4 and argv[1] == "platform":
        platform(argv[2], argv[3])
    elif len(argv) == 4 and argv[1] == "big":
        big(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
