// Package kubewatch builds the ListerWatchers that client-go's watch
// tools (watchtools.UntilWithSync, informers) take, for one object by
// name or the objects of a label selector, from any typed client of one
// resource (clientset.CoreV1().Pods(ns), a Gateway API clientset's
// GatewayV1().Gateways(ns), ...).
package kubewatch

import (
	"context"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"
)

// Client is a typed client of one resource; L is its list type.
type Client[L runtime.Object] interface {
	List(ctx context.Context, opts metav1.ListOptions) (L, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
}

// Selected lists and watches the objects of c that sel's field and
// label selectors select.
func Selected[L runtime.Object](c Client[L], sel metav1.ListOptions) *cache.ListWatch {
	set := func(o *metav1.ListOptions) {
		o.FieldSelector, o.LabelSelector = sel.FieldSelector, sel.LabelSelector
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			set(&o)
			return c.List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			set(&o)
			return c.Watch(ctx, o)
		},
	}
}

// Named lists and watches the object name of c.
func Named[L runtime.Object](c Client[L], name string) *cache.ListWatch {
	return Selected(c, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
}

// Labelled lists and watches the objects of c that the label selector
// selects ("key=value").
func Labelled[L runtime.Object](c Client[L], selector string) *cache.ListWatch {
	return Selected(c, metav1.ListOptions{LabelSelector: selector})
}
