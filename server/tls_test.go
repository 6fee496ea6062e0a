package server_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/pando/pando/api/pandopb"
	"github.com/pando/pando/client"
	"github.com/pando/pando/kv"
	"github.com/pando/pando/pki"
	"github.com/pando/pando/server"
)

// testPKI writes a CA and node certificates for 127.0.0.1 into a directory.
type testPKI struct {
	dir string
	ca  *pki.CA
}

func newTestPKI(t *testing.T, name string) *testPKI {
	t.Helper()
	ca, err := pki.NewCA(name, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{dir: t.TempDir(), ca: ca}
	if err := ca.WriteCA(p.dir); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *testPKI) issue(t *testing.T, name string, kind pki.Kind) pki.Files {
	t.Helper()
	c, k, err := p.ca.Issue(name, kind, []string{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WritePair(p.dir, name, c, k); err != nil {
		t.Fatal(err)
	}
	return pki.Files{Cert: filepath.Join(p.dir, name+".crt"), Key: filepath.Join(p.dir, name+".key"), CA: filepath.Join(p.dir, "ca.crt")}
}

func tlsConfigs(t *testing.T, f pki.Files) (*tls.Config, *tls.Config) {
	t.Helper()
	srv, err := f.ServerConfig()
	if err != nil {
		t.Fatal(err)
	}
	cl, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return srv, cl
}

func clientTLS(t *testing.T, f pki.Files) *tls.Config {
	t.Helper()
	cl, err := f.ClientConfig()
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

func TestTLSClusterServesAndRefusesStrangers(t *testing.T) {
	good := newTestPKI(t, "pando test CA")
	other := newTestPKI(t, "another CA")
	nodeFiles := map[uint64]pki.Files{}
	for id := uint64(1); id <= 3; id++ {
		nodeFiles[id] = good.issue(t, "node"+string(rune('0'+id)), pki.Node)
	}
	// Node 3 holds a certificate from another CA (and trusts that CA): it
	// must not be able to join.
	intruder := other.issue(t, "node3", pki.Node)
	c := startClusterWith(t, 3, 0, func(id uint64, cfg *server.Config) {
		f := nodeFiles[id]
		if id == 3 {
			f = intruder
		}
		cfg.TLS, cfg.PeerTLS = tlsConfigs(t, f)
	}, false)
	lead := c.waitLeader()
	if lead == 3 {
		t.Fatal("the node with a foreign certificate leads")
	}

	// A client with the CA is served (gRPC and HTTPS).
	caOnly := clientTLS(t, pki.Files{CA: filepath.Join(good.dir, "ca.crt")})
	cl, err := client.New(client.Config{Endpoints: []string{c.addrs[1], c.addrs[2]}, TLS: caOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cl.Put(ctx, []byte("secret"), []byte("value")); err != nil {
		t.Fatal(err)
	}
	if kv, err := cl.Get(ctx, []byte("secret")); err != nil || string(kv.Value) != "value" {
		t.Fatalf("get over TLS: %v %v", kv, err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: caOnly}}
	resp, err := hc.Get("https://" + c.addrs[1] + "/v1/kv/secret")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Proto != "HTTP/1.1" {
		t.Fatalf("HTTPS get: %d %s", resp.StatusCode, resp.Proto)
	}
	// The dashboard reaches the peers over TLS too.
	resp, err = hc.Get("https://" + c.addrs[1] + "/v1/dashboard")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	// A client without the CA is refused: plain gRPC, plain HTTP, and TLS
	// that does not trust the cluster's CA.
	short := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), time.Second)
	}
	for name, cfg := range map[string]client.Config{
		"plaintext":       {Endpoints: []string{c.addrs[1]}},
		"system roots":    {Endpoints: []string{c.addrs[1]}, TLS: &tls.Config{}},
		"another CA only": {Endpoints: []string{c.addrs[1]}, TLS: clientTLS(t, pki.Files{CA: filepath.Join(other.dir, "ca.crt")})},
	} {
		bad, err := client.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := short()
		_, err = bad.Get(ctx, []byte("secret"))
		cancel()
		bad.Close()
		if err == nil {
			t.Fatalf("%s: a client without the CA was served", name)
		}
		t.Logf("%s: %v", name, err)
	}
	if resp, err := http.Get("http://" + c.addrs[1] + "/v1/status"); err == nil {
		resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP served on a TLS node")
		}
	}

	// The intruder never joins: it knows no leader, and the others see it
	// as unreachable.
	time.Sleep(500 * time.Millisecond)
	if st, _ := c.servers[3].Node().Status(1); st.LeaderID != 0 {
		t.Fatalf("intruder knows leader %d", st.LeaderID)
	}
	// A client certificate from the right CA is not a node's: Raft refuses it.
	cf := good.issue(t, "someone", pki.Client)
	ccfg := clientTLS(t, cf)
	conn, err := grpc.NewClient(c.addrs[1], grpc.WithTransportCredentials(credentials.NewTLS(ccfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx2, cancel2 := short()
	defer cancel2()
	stream, err := pandopb.NewRaftClient(conn).Send(ctx2)
	if err == nil {
		_ = stream.Send(&pandopb.RaftBatch{FromNode: 2})
		_, err = stream.CloseAndRecv()
	}
	if !errors.Is(kv.FromStatus(err), kv.ErrUnauthenticated) {
		t.Fatalf("raft stream from a client certificate: %v", err)
	}
	// ...but it may use the KV API (mutual TLS for clients).
	ccl, err := client.New(client.Config{Endpoints: []string{c.addrs[1]}, TLS: ccfg})
	if err != nil {
		t.Fatal(err)
	}
	defer ccl.Close()
	if _, err := ccl.Get(ctx, []byte("secret")); err != nil {
		t.Fatalf("client certificate: %v", err)
	}
}

func TestBearerToken(t *testing.T) {
	const token = "s3cret-token"
	c := startClusterWith(t, 3, 0, func(id uint64, cfg *server.Config) { cfg.AuthToken = token }, true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	noToken, _ := client.New(client.Config{Endpoints: c.endpoints()})
	defer noToken.Close()
	if _, err := noToken.Put(ctx, []byte("k"), []byte("v")); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("put without token: %v", err)
	}
	wrong, _ := client.New(client.Config{Endpoints: c.endpoints(), Token: "guess"})
	defer wrong.Close()
	if _, err := wrong.Get(ctx, []byte("k")); !errors.Is(err, client.ErrUnauthenticated) {
		t.Fatalf("get with a wrong token: %v", err)
	}
	// With the token: served, through forwarding between nodes too.
	for _, ep := range c.endpoints() {
		cl, _ := client.New(client.Config{Endpoints: []string{ep}, Token: token})
		if _, err := cl.Put(ctx, []byte("k"), []byte("v")); err != nil {
			t.Fatalf("put via %s: %v", ep, err)
		}
		cl.Close()
	}
	resp, body := doHTTP(t, "GET", "http://"+c.addrs[1]+"/v1/kv/k", nil)
	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
		t.Fatalf("HTTP without token: %d %s", resp.StatusCode, body)
	}
	req, _ := http.NewRequest("GET", "http://"+c.addrs[2]+"/v1/dashboard", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	r2, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	r2.Body.Close()
	if r2.StatusCode != 200 {
		t.Fatalf("HTTP with token: %d", r2.StatusCode)
	}
	// Health stays open for probes.
	if resp, _ := doHTTP(t, "GET", "http://"+c.addrs[1]+"/healthz", nil); resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
}
