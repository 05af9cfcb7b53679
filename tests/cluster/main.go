// Command kube-local is one multi-call binary holding the real Kubernetes components the
// ocireg tests and demo run on loopback: embedded etcd, kube-apiserver,
// kube-controller-manager, kubelet and kubectl, plus `keyring`, which prints the credentials
// the kubelet would send for an image given some pull secrets. One binary keeps the cold build to a single link of
// the shared dependency tree. The subcommand is the first argument, or the program name
// (a symlink called kubectl behaves as kubectl).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	v1 "k8s.io/api/core/v1"
	"k8s.io/component-base/cli"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
	"k8s.io/kubernetes/pkg/credentialprovider"
	credentialprovidersecrets "k8s.io/kubernetes/pkg/credentialprovider/secrets"
	"k8s.io/kubernetes/pkg/util/parsers"
)

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	switch name {
	case "kubectl", "kube-apiserver", "kube-controller-manager", "kubelet", "etcd":
	default:
		if len(args) == 0 {
			fmt.Fprintln(os.Stderr, "usage: kube-local etcd|kube-apiserver|kube-controller-manager|kubelet|kubectl|keyring [args...]")
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	// The component commands parse os.Args[1:] through cobra; present them their own argv.
	os.Args = append([]string{name}, args...)
	switch name {
	case "etcd":
		os.Exit(runEtcd(args))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "keyring":
		os.Exit(runKeyring(args))
	case "kubectl":
		// kubectl prints its own errors; only the exit code is left to set.
		if err := cli.RunNoErrOutput(kubectlcmd.NewDefaultKubectlCommand()); err != nil {
			os.Exit(1)
		}
		os.Exit(0)
	default:
		fmt.Fprintf(os.Stderr, "kube-local: unknown component %q\n", name)
		os.Exit(2)
	}
}

// runEtcd starts a single-member embedded etcd listening only on the given loopback URLs.
func runEtcd(args []string) int {
	fs := flag.NewFlagSet("etcd", flag.ExitOnError)
	dataDir := fs.String("data-dir", "", "directory for etcd data")
	clientURL := fs.String("listen-client-url", "http://127.0.0.1:2379", "client URL (loopback)")
	peerURL := fs.String("listen-peer-url", "http://127.0.0.1:2380", "peer URL (loopback)")
	_ = fs.Parse(args)
	if *dataDir == "" {
		fmt.Fprintln(os.Stderr, "etcd: --data-dir is required")
		return 2
	}
	cu, err := url.Parse(*clientURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: bad client url:", err)
		return 2
	}
	pu, err := url.Parse(*peerURL)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: bad peer url:", err)
		return 2
	}
	cfg := embed.NewConfig()
	cfg.Dir = *dataDir
	cfg.Name = "local"
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	// Tests create and delete objects quickly; keep the keyspace small without stalling.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "5m"
	cfg.QuotaBackendBytes = 2 << 30
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcd: start:", err)
		return 1
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		fmt.Fprintln(os.Stderr, "etcd: ready on", cu.String())
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		fmt.Fprintln(os.Stderr, "etcd: not ready after 60s")
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-ctx.Done():
		return 0
	case err := <-e.Err():
		fmt.Fprintln(os.Stderr, "etcd:", err)
		return 1
	}
}

// keyringEntry is one credential the kubelet would offer, in the order it would try them.
type keyringEntry struct {
	Secret        string `json:"secret,omitempty"` // namespace/name of the pull secret it came from
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	Auth          string `json:"auth,omitempty"`
	ServerAddress string `json:"serveraddress,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
	RegistryToken string `json:"registrytoken,omitempty"`
}

// runKeyring builds the kubelet's keyring from Secret objects (kubectl get secret -o json) the
// way the kubelet's image manager does (pkg/kubelet/images: ParseImageName, MakeDockerKeyring,
// Lookup) and prints the credentials it would send for --image as a JSON list, in order.
// No node keyring or credential plugins: only what the pod's pull secrets give.
func runKeyring(args []string) int {
	fs := flag.NewFlagSet("keyring", flag.ExitOnError)
	image := fs.String("image", "", "image reference as written in a pod spec")
	_ = fs.Parse(args)
	if *image == "" || fs.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: kube-local keyring --image REF secret.json...")
		return 2
	}
	secrets := make([]v1.Secret, 0, fs.NArg())
	for _, path := range fs.Args() {
		raw, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "keyring:", err)
			return 1
		}
		var secret v1.Secret
		if err := json.Unmarshal(raw, &secret); err != nil {
			fmt.Fprintf(os.Stderr, "keyring: %s: %v\n", path, err)
			return 1
		}
		secrets = append(secrets, secret)
	}
	repoToPull, _, _, err := parsers.ParseImageName(*image)
	if err != nil {
		fmt.Fprintln(os.Stderr, "keyring:", err)
		return 1
	}
	keyring, err := credentialprovidersecrets.MakeDockerKeyring(secrets, credentialprovider.UnionDockerKeyring{})
	if err != nil {
		// The kubelet fails the pull with this error too.
		fmt.Fprintln(os.Stderr, "keyring:", err)
		return 1
	}
	found, _ := keyring.Lookup(repoToPull)
	out := make([]keyringEntry, 0, len(found))
	for _, tracked := range found {
		entry := keyringEntry{
			Username:      tracked.Username,
			Password:      tracked.Password,
			Auth:          tracked.Auth,
			ServerAddress: tracked.ServerAddress,
			IdentityToken: tracked.IdentityToken,
			RegistryToken: tracked.RegistryToken,
		}
		if tracked.Source != nil && tracked.Source.Secret != nil {
			entry.Secret = tracked.Source.Secret.Namespace + "/" + tracked.Source.Secret.Name
		}
		out = append(out, entry)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fmt.Fprintln(os.Stderr, "keyring:", err)
		return 1
	}
	return 0
}
