// flux-auth reads a pull Secret the two ways Flux's source-controller reads a source's
// secretRef, with the libraries it calls, and uses what it got:
//
//	flux-auth oci REF SECRET.json
//	    OCIRepository (internal/controller/ocirepository_controller.go, keychain): the
//	    Secret's keychain (go-containerregistry's authn/kubernetes NewFromPullSecrets, the
//	    pull-secret part of the k8schain.NewFromPullSecrets it calls), then the manifest of
//	    REF and its Helm chart layer fetched with it; prints the layer's digest and size.
//	flux-auth helm URL SECRET.json
//	    HelmRepository type oci (internal/helm/registry/auth.go, LoginOptionFromSecret):
//	    docker/cli's config file GetAuthConfig(host of URL), the entry's server address
//	    checked, username and password both required; prints them for the Helm login.
//
// SECRET.json is the Secret as the API returns it. Errors go to stderr, exit 1.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"os"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/credentials"
	"github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
)

const helmLayer = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: flux-auth oci REF SECRET.json | flux-auth helm URL SECRET.json")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2], os.Args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "flux-auth:", err)
		os.Exit(1)
	}
}

func run(mode, target, path string) error {
	raw, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var secret corev1.Secret
	if err := json.Unmarshal(raw, &secret); err != nil {
		return err
	}
	switch mode {
	case "oci":
		return pull(target, secret)
	case "helm":
		return login(target, secret)
	}
	return fmt.Errorf("unknown mode %q", mode)
}

func pull(ref string, secret corev1.Secret) error {
	ctx := context.Background()
	keychain, err := kubernetes.NewFromPullSecrets(ctx, []corev1.Secret{secret})
	if err != nil {
		return err
	}
	parsed, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	image, err := remote.Image(parsed, remote.WithContext(ctx), remote.WithAuthFromKeychain(keychain))
	if err != nil {
		return err
	}
	manifest, err := image.Manifest()
	if err != nil {
		return err
	}
	for _, descriptor := range manifest.Layers {
		if string(descriptor.MediaType) != helmLayer {
			continue
		}
		layer, err := image.LayerByDigest(descriptor.Digest)
		if err != nil {
			return err
		}
		reader, err := layer.Compressed()
		if err != nil {
			return err
		}
		defer reader.Close()
		size, err := io.Copy(io.Discard, reader)
		if err != nil {
			return err
		}
		return json.NewEncoder(os.Stdout).Encode(map[string]any{"digest": descriptor.Digest.String(), "size": size})
	}
	return fmt.Errorf("%s has no Helm chart layer", ref)
}

func login(registryURL string, secret corev1.Secret) error {
	parsed, err := url.Parse(registryURL)
	if err != nil {
		return err
	}
	if secret.Type != corev1.SecretTypeDockerConfigJson {
		return fmt.Errorf("secret %s is of type %s", secret.Name, secret.Type)
	}
	file, err := config.LoadFromReader(bytes.NewReader(secret.Data[corev1.DockerConfigJsonKey]))
	if err != nil {
		return err
	}
	auth, err := file.GetAuthConfig(parsed.Host)
	if err != nil {
		return err
	}
	if credentials.ConvertToHostname(auth.ServerAddress) != parsed.Host {
		return fmt.Errorf("no auth config for %q in secret %s", parsed.Host, secret.Name)
	}
	if auth.Username == "" || auth.Password == "" {
		return fmt.Errorf("secret %s: required fields 'username' and 'password'", secret.Name)
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]string{"username": auth.Username, "password": auth.Password})
}
