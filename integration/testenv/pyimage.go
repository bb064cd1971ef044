package testenv

import (
	"archive/tar"
	"bufio"
	"context"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// PyImage is a Python runtime taken from this machine: the interpreter, the
// directories of its prefix, and every shared library that ldd finds for
// the interpreter and the extension modules, each at the path it has here.
type PyImage struct {
	Python string   // the interpreter's path (in the image as on the host)
	Dirs   []string // directories copied whole, one layer each
	Script string   // the workload: imports some modules, prints ReadyLine
}

// ReadyLine is what the workload prints when it has started.
const ReadyLine = "ready"

// SmallPython is Debian's python3 and its standard library (some 50 MB):
// the image of the functional tests.
func SmallPython() PyImage {
	return PyImage{
		Python: "/usr/bin/python3.11",
		Dirs:   []string{"/usr/lib/python3.11"},
		Script: `import json, email.mime.text, http.client, decimal; print("` + ReadyLine + `", flush=True)`,
	}
}

// DefaultBenchPython is the prefix of BenchPython the benchmarks use
// unless told otherwise.
const DefaultBenchPython = "/root/.pyenv/versions/3.11.7"

// BenchPython is a Python prefix of a few hundred MB: the interpreter, its
// standard library and its site-packages (three layers with the shared
// libraries), and a workload importing a few standard and third-party
// modules.
func BenchPython(prefix string) PyImage {
	return PyImage{
		Python: filepath.Join(prefix, "bin", "python3.11"),
		Dirs:   []string{filepath.Join(prefix, "lib", "python3.11", "site-packages"), filepath.Join(prefix, "lib")},
		Script: `import json, ssl, sqlite3, decimal, email.mime.text, http.client, yaml, click, attr, urllib3; print("` + ReadyLine + `", flush=True)`,
	}
}

// layers returns the image's layers: shared libraries first, then each of
// dirs, the interpreter with the libraries.
func (p PyImage) layers(t testing.TB) []v1.Layer {
	t.Helper()
	libs := map[string]bool{p.Python: true}
	var sos []string
	for _, d := range p.Dirs {
		_ = filepath.WalkDir(d, func(path string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() && strings.Contains(e.Name(), ".so") {
				sos = append(sos, path)
			}
			return nil
		})
	}
	for _, f := range append([]string{p.Python}, sos...) {
		for _, lib := range ldd(f) {
			libs[lib] = true
		}
	}
	var libList []string
	for l := range libs {
		libList = append(libList, l)
	}
	sort.Strings(libList)
	ls := []v1.Layer{fileLayer(t, libList)}
	for _, d := range p.Dirs {
		// A directory nested in another of dirs is in its own layer only.
		var skip []string
		for _, o := range p.Dirs {
			if o != d && strings.HasPrefix(o, d+"/") {
				skip = append(skip, o)
			}
		}
		ls = append(ls, dirLayer(t, d, skip))
	}
	return ls
}

// ldd lists the absolute paths of the shared libraries f loads.
func ldd(f string) []string {
	out, err := exec.Command("ldd", f).Output()
	if err != nil {
		return nil // not dynamic
	}
	var libs []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		for _, field := range strings.Fields(sc.Text()) {
			if strings.HasPrefix(field, "/") {
				libs = append(libs, field)
			}
		}
	}
	return libs
}

// Push builds the image and pushes it as ref (plain HTTP), and returns the
// sum of its layers' sizes.
func (p PyImage) Push(t testing.TB, ref string) (size int64) {
	t.Helper()
	img, err := mutate.AppendLayers(empty.Image, p.layers(t)...)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Config.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE=1"}
	cfg.Config.Entrypoint = []string{p.Python, "-c", p.Script}
	if img, err = mutate.ConfigFile(img, cfg); err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range m.Layers {
		size += l.Size
	}
	return size
}

// Manifest reads ref's manifest and digest from its registry (plain HTTP).
func Manifest(t testing.TB, ref string) (*v1.Manifest, v1.Hash) {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r)
	if err != nil {
		t.Fatalf("read %s: %v", ref, err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	dg, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return m, dg
}

// ImageSize sums the compressed sizes of ref's layers.
func ImageSize(t testing.TB, ref string) int64 {
	t.Helper()
	m, _ := Manifest(t, ref)
	var n int64
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}

// BenchPythonFromEnv is BenchPython of the prefix in the environment
// variable env, or of DefaultBenchPython; it fails the test when that
// prefix has no python3.11.
func BenchPythonFromEnv(t testing.TB, env string) (PyImage, string) {
	t.Helper()
	prefix := DefaultBenchPython
	if v := os.Getenv(env); v != "" {
		prefix = v
	}
	img := BenchPython(prefix)
	if _, err := os.Stat(img.Python); err != nil {
		t.Fatalf("no Python at %s (set %s to a prefix with bin/python3.11): %v", prefix, env, err)
	}
	return img, prefix
}

// recordedLine is what `thaw convert --record` prints about the files it
// recorded.
var recordedLine = regexp.MustCompile(`recorded (\d+) start-up files`)

// Convert runs `thaw convert --record` (thaw the binary) from plain to
// esgz: the workload runs once in the containerd at sock, and the files it
// opens until its ready line go first. It returns the output, the number of
// recorded files and the time the command took.
func Convert(t testing.TB, thaw, plain, esgz, sock string) (string, int, time.Duration) {
	t.Helper()
	args := []string{"convert", plain, esgz, "--insecure", "--record", "--containerd", sock, "--ready", ReadyLine}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := RunCmd(ctx, CleanEnv(), thaw, args...)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	m := recordedLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("thaw convert --record did not say what it recorded:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return out, n, took
}

// fileLayer is a layer of the given host files, each at its real path
// (symlinks resolved, as /proc/self/maps shows it) with a symlink at the
// path given when that differs, and their parent directories.
func fileLayer(t testing.TB, files []string) v1.Layer {
	t.Helper()
	return layerFrom(t, func(tw *tar.Writer, dirs map[string]bool) {
		done := map[string]bool{}
		for _, f := range files {
			real, err := filepath.EvalSymlinks(f)
			if err != nil {
				continue
			}
			if !done[real] {
				done[real] = true
				addFile(t, tw, dirs, real)
			}
			if real != f && !done[f] {
				done[f] = true
				addEntry(t, tw, dirs, &tar.Header{Name: f, Typeflag: tar.TypeSymlink, Linkname: real, Mode: 0o777})
			}
		}
	})
}

// dirLayer is a layer holding the host directory dir but not the
// directories in skip, symlinks kept.
func dirLayer(t testing.TB, dir string, skip []string) v1.Layer {
	t.Helper()
	return layerFrom(t, func(tw *tar.Writer, dirs map[string]bool) {
		_ = filepath.WalkDir(dir, func(path string, e fs.DirEntry, err error) error {
			if e != nil && e.IsDir() && slices.Contains(skip, path) {
				return filepath.SkipDir
			}
			if err != nil || e.IsDir() || strings.Contains(path, "/__pycache__/") && !strings.HasSuffix(path, ".pyc") {
				return nil
			}
			addFile(t, tw, dirs, path)
			return nil
		})
	})
}

func layerFrom(t testing.TB, write func(*tar.Writer, map[string]bool)) v1.Layer {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "layer-*.tar")
	if err != nil {
		t.Fatal(err)
	}
	tw := tar.NewWriter(f)
	write(tw, map[string]bool{})
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	l, err := tarball.LayerFromFile(f.Name())
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// addFile adds the host file path (a regular file or a symlink, kept as
// one) at the same path.
func addFile(t testing.TB, tw *tar.Writer, dirs map[string]bool, path string) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		return
	}
	switch {
	case fi.Mode()&os.ModeSymlink != 0:
		target, err := os.Readlink(path)
		if err != nil {
			t.Fatal(err)
		}
		addEntry(t, tw, dirs, &tar.Header{Name: path, Typeflag: tar.TypeSymlink, Linkname: target, Mode: 0o777})
	case fi.Mode().IsRegular():
		src, err := os.Open(path)
		if err != nil {
			return
		}
		defer src.Close()
		addEntry(t, tw, dirs, &tar.Header{Name: path, Typeflag: tar.TypeReg, Mode: int64(fi.Mode().Perm()), Size: fi.Size()})
		if _, err := io.Copy(tw, src); err != nil {
			t.Fatal(err)
		}
	}
}

// addEntry writes h (Name an absolute path) after the parent directories
// the layer does not have yet.
func addEntry(t testing.TB, tw *tar.Writer, dirs map[string]bool, h *tar.Header) {
	t.Helper()
	var parents []string
	for d := filepath.Dir(h.Name); d != "/" && !dirs[d]; d = filepath.Dir(d) {
		parents = append(parents, d)
	}
	for i := len(parents) - 1; i >= 0; i-- {
		dirs[parents[i]] = true
		if err := tw.WriteHeader(&tar.Header{Name: strings.TrimPrefix(parents[i], "/") + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	h.Name = strings.TrimPrefix(h.Name, "/")
	h.ModTime = time.Unix(0, 0)
	if err := tw.WriteHeader(h); err != nil {
		t.Fatal(err)
	}
}
