// argocd-repo resolves a repository URL the way Argo CD does, with Argo CD's own code: it
// reads the repository and repo-creds Secrets of a namespace through a real API server
// (util/settings' informer, util/db's GetRepository: an exact `repository` Secret for the
// URL, else the `repo-creds` Secret with the longest URL prefix) and prints the repository
// Argo CD's repo-server would be handed, as JSON. The e2e tests then pull the chart with
// exactly those credentials.
//
//	argocd-repo --kubeconfig FILE --namespace argocd --url registry.example.com/charts/podinfo
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/argoproj/argo-cd/v3/util/db"
	"github.com/argoproj/argo-cd/v3/util/settings"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig of the API server")
	namespace := flag.String("namespace", "argocd", "namespace Argo CD runs in")
	url := flag.String("url", "", "repository URL, as an Application's source.repoURL")
	project := flag.String("project", "", "Argo CD project asking")
	flag.Parse()
	if err := run(*kubeconfig, *namespace, *url, *project); err != nil {
		fmt.Fprintln(os.Stderr, "argocd-repo:", err)
		os.Exit(1)
	}
}

func run(kubeconfig, namespace, url, project string) error {
	config, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return err
	}
	clientset, err := kubernetes.NewForConfig(config)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	manager := settings.NewSettingsManager(ctx, clientset, namespace)
	repo, err := db.NewDB(namespace, manager, clientset).GetRepository(ctx, url, project)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"url":            repo.Repo,
		"type":           repo.Type,
		"enableOCI":      repo.EnableOCI,
		"username":       repo.Username,
		"password":       repo.Password,
		"insecure":       repo.Insecure,
		"project":        repo.Project,
		"inheritedCreds": repo.InheritedCreds,
		"hasCredentials": repo.HasCredentials(),
	})
}
