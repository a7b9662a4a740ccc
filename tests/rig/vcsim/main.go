// Command vcsim runs govmomi's vCenter simulator for Sendense's tests.
//
// Debian ships govmomi 0.24.2 as a library only (no vcsim command), so the
// test rig builds this small main against it. It imports the simulator
// package from an overlay GOPATH: Debian's simulator sources plus the files in
// ./overlay (bug fixes and Changed Block Tracking; see
// overlay/sendense_install.go), assembled by tests/rig/vcsim.py, which also
// builds and runs this command.
//
// Protocol with the parent process:
//   - the password comes from an environment variable or a file, never argv;
//   - one JSON line on stdout once the server accepts connections (nothing
//     else is ever written to stdout);
//   - SIGTERM, SIGINT or EOF on stdin (-exit-on-stdin-eof) stop the server
//     and remove the datastore directories this process created.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmware/govmomi/find"
	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25"
)

type options struct {
	port          int
	username      string
	passwordEnv   string
	passwordFile  string
	datastoreRoot string
	datastores    []string
	certOut       string
	stdinEOF      bool
	cbt           simulator.SendenseOptions
}

// ready is the single line printed on stdout once the server is up.
type ready struct {
	URL        string            `json:"url"`
	Host       string            `json:"host"`
	Port       int               `json:"port"`
	PID        int               `json:"pid"`
	Username   string            `json:"username"`
	Thumbprint string            `json:"thumbprint"`
	CertPEM    string            `json:"cert_pem"`
	Datastores map[string]string `json:"datastores"`
	BlockSize  int64             `json:"cbt_block_size"`
	MaxSpan    int64             `json:"cbt_max_span"`
	MaxAreas   int               `json:"cbt_max_areas"`
}

func parseFlags() options {
	var o options
	var names string
	flag.IntVar(&o.port, "port", 0, "TCP port on 127.0.0.1; 0 picks a free one (reported in the ready line)")
	flag.StringVar(&o.username, "username", "", "the only user name Login accepts")
	flag.StringVar(&o.passwordEnv, "password-env", "VCSIM_PASSWORD", "environment variable holding the password")
	flag.StringVar(&o.passwordFile, "password-file", "", "file holding the password (overrides -password-env)")
	flag.StringVar(&o.datastoreRoot, "datastore-root", "", "existing directory; each datastore is a subdirectory named after it")
	flag.StringVar(&names, "datastores", "LocalDS_0", "comma-separated datastore names")
	flag.StringVar(&o.certOut, "cert-out", "", "also write the server certificate (PEM) to this file")
	flag.BoolVar(&o.stdinEOF, "exit-on-stdin-eof", false, "stop when stdin reaches EOF (the parent died)")
	flag.Int64Var(&o.cbt.BlockSize, "cbt-block-size", 64<<10, "CBT granularity in bytes")
	flag.Int64Var(&o.cbt.MaxSpan, "cbt-max-span", 0, "most bytes one QueryChangedDiskAreas call covers; 0: the rest of the disk")
	flag.IntVar(&o.cbt.MaxAreas, "cbt-max-areas", 2048, "most areas one QueryChangedDiskAreas answer lists; 0: no limit")
	flag.Parse()
	for _, n := range strings.Split(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			o.datastores = append(o.datastores, n)
		}
	}
	return o
}

func readPassword(o options) (string, error) {
	if o.passwordFile != "" {
		b, err := os.ReadFile(o.passwordFile)
		if err != nil {
			return "", err
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
	p := os.Getenv(o.passwordEnv)
	// Nothing this process starts needs it.
	_ = os.Unsetenv(o.passwordEnv)
	return p, nil
}

func validate(o options, password string) error {
	switch {
	case o.username == "" || password == "":
		return fmt.Errorf("a username and a password are required")
	case o.datastoreRoot == "":
		return fmt.Errorf("-datastore-root is required")
	case len(o.datastores) == 0:
		return fmt.Errorf("at least one datastore is required")
	case o.cbt.BlockSize < 512 || o.cbt.MaxSpan < 0 || o.cbt.MaxSpan%o.cbt.BlockSize != 0:
		return fmt.Errorf("-cbt-max-span must be 0 or a multiple of -cbt-block-size (>= 512)")
	case o.cbt.MaxAreas < 0:
		return fmt.Errorf("-cbt-max-areas must not be negative")
	}
	return nil
}

// newModel is one datacenter DC0 with one cluster of one host and no VMs.
// Datastores are added by addDatastores, at paths of our choosing, instead of
// the model's random temporary directories.
func newModel() (*simulator.Model, error) {
	m := simulator.VPX()
	m.Host = 0
	m.ClusterHost = 1
	m.Machine = 0
	m.Datastore = 0
	m.Autostart = false
	return m, m.Create()
}

// addDatastores mounts <root>/<name> as local datastore <name> on every host
// of DC0, through the simulator's own API as Model.Create does for its own.
func addDatastores(m *simulator.Model, root string, names []string) (map[string]string, error) {
	ctx := context.Background()
	c, err := vim25.NewClient(ctx, m.Service)
	if err != nil {
		return nil, err
	}
	finder := find.NewFinder(c, false)
	dc, err := finder.Datacenter(ctx, "DC0")
	if err != nil {
		return nil, err
	}
	finder.SetDatacenter(dc)
	hosts, err := finder.HostSystemList(ctx, "*")
	if err != nil {
		return nil, err
	}
	dirs := make(map[string]string)
	for _, name := range names {
		dir, err := filepath.Abs(filepath.Join(root, name))
		if err != nil {
			return dirs, err
		}
		if err := os.Mkdir(dir, 0o700); err != nil {
			return dirs, err
		}
		dirs[name] = dir
		for _, host := range hosts {
			dss, err := host.ConfigManager().DatastoreSystem(ctx)
			if err != nil {
				return dirs, err
			}
			if _, err := dss.CreateLocalDatastore(ctx, name, dir); err != nil {
				return dirs, err
			}
		}
	}
	return dirs, nil
}

func thumbprint(der []byte) string {
	sum := sha256.Sum256(der)
	parts := make([]string, len(sum))
	for i, b := range sum {
		parts[i] = fmt.Sprintf("%02X", b)
	}
	return strings.Join(parts, ":")
}

// waitForStop returns when the process is asked to stop.
func waitForStop(stdinEOF bool) {
	stop := make(chan struct{}, 2)
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sigs; stop <- struct{}{} }()
	if stdinEOF {
		go func() { _, _ = io.Copy(io.Discard, os.Stdin); stop <- struct{}{} }()
	}
	<-stop
}

// closeServer gives in-flight requests (a WaitForUpdates long poll, say) a
// moment, then drops them: stopping must never hang.
func closeServer(s *simulator.Server) {
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		s.CloseClientConnections()
	}
}

func run() error {
	o := parseFlags()
	password, err := readPassword(o)
	if err != nil {
		return err
	}
	if err := validate(o, password); err != nil {
		return err
	}

	m, err := newModel()
	if err != nil {
		return err
	}
	defer m.Remove()
	dirs, err := addDatastores(m, o.datastoreRoot, o.datastores)
	defer func() {
		for _, d := range dirs {
			_ = os.RemoveAll(d)
		}
	}()
	if err != nil {
		return err
	}
	simulator.SendenseInstall(o.cbt)

	m.Service.Listen = &url.URL{
		Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(o.port)),
		User: url.UserPassword(o.username, password),
	}
	cert, err := serverCertificate()
	if err != nil {
		return err
	}
	m.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	s := m.Service.NewServer()
	defer closeServer(s)

	der := s.Certificate().Raw
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	if o.certOut != "" {
		if err := os.WriteFile(o.certOut, []byte(certPEM), 0o600); err != nil {
			return err
		}
	}
	port := s.Listener.Addr().(*net.TCPAddr).Port
	line, err := json.Marshal(ready{
		URL:        s.URL.Scheme + "://" + s.URL.Host + s.URL.Path,
		Host:       s.URL.Host,
		Port:       port,
		PID:        os.Getpid(),
		Username:   o.username,
		Thumbprint: thumbprint(der),
		CertPEM:    certPEM,
		Datastores: dirs,
		BlockSize:  o.cbt.BlockSize,
		MaxSpan:    o.cbt.MaxSpan,
		MaxAreas:   o.cbt.MaxAreas,
	})
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(os.Stdout, "%s\n", line); err != nil {
		return err
	}

	waitForStop(o.stdinEOF)
	return nil
}

func main() {
	log.SetPrefix("vcsim: ")
	if err := run(); err != nil {
		log.Printf("error: %s", err)
		os.Exit(1)
	}
}
