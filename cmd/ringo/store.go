package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"

	"github.com/ringo-ml/ringo/internal/audit"
	"github.com/ringo-ml/ringo/internal/auth"
	"github.com/ringo-ml/ringo/runtime/rendezvous"
)

const storeUsage = `Usage: ringo store --listen HOST:PORT --token-file FILE [--audit-log FILE] [--tls-cert F --tls-key F --tls-ca F]

Serves a rendezvous store until interrupted: the place where the sites of a
federation (ringo launch --federation HOST:PORT), each a job of its own, meet
for their outer syncs. Clients must hold the token in FILE. It keeps its
keys in memory, so a restarted store starts empty: where the federation must
outlive the store's process, use etcd (--federation etcd://HOST:PORT).
`

func runStore(ctx context.Context, args []string) error {
	fs := newFlagSet("store", storeUsage)
	listen := fs.String("listen", "127.0.0.1:29400", "HOST:PORT to serve on (port 0: any free port, printed)")
	tokenFile := fs.String("token-file", "", "file (mode 0600) with the secret every client must hold")
	auditLog := fs.String("audit-log", "", "append every refused connection to FILE (event store.refused), hash-chained")
	var tf rendezvous.TLSFiles
	fs.StringVar(&tf.Cert, "tls-cert", "", "the store's certificate (PEM) for mutual TLS: clients then need one signed by --tls-ca (ringo launch --tls-*)")
	fs.StringVar(&tf.Key, "tls-key", "", "its private key (PEM)")
	fs.StringVar(&tf.CA, "tls-ca", "", "the CA (PEM) that signed the store's and every client's certificate")
	if err := noArgs(fs, args); err != nil {
		return err
	}
	if *tokenFile == "" {
		return usageErr(fs, "--token-file is required: the store refuses clients without the token")
	}
	token, err := auth.ReadTokenFile(*tokenFile)
	if err != nil {
		return err
	}
	var log *audit.Log
	if *auditLog != "" {
		if log, err = audit.Open(*auditLog); err != nil {
			return err
		}
	}
	var srvTLS *tls.Config
	if tf.Enabled() {
		if srvTLS, _, err = tf.Configs(); err != nil {
			return err
		}
	}
	srv, err := rendezvous.NewServerTLS(*listen, token, srvTLS)
	if err != nil {
		return fmt.Errorf("serving the store on %s: %w", *listen, err)
	}
	defer srv.Close()
	srv.OnRefuse(func(remote string, why error) {
		fmt.Fprintf(os.Stderr, "ringo store: refused a connection from %s: %v\n", remote, why)
		log.Record("store.refused", map[string]any{"remote": remote, "why": why.Error()})
	})
	fmt.Printf("ringo store: serving on %s\n", srv.Addr())
	<-ctx.Done()
	return nil
}
