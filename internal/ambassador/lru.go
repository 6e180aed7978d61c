package ambassador

import "container/list"

// lru is a size-bounded map that drops its least recently used entry when
// a new key would exceed the bound. It is not safe for concurrent use; its
// owners hold their own mutex.
type lru[K comparable, V any] struct {
	max   int
	order *list.List // front = most recently used; elements hold *lruEntry
	items map[K]*list.Element
}

type lruEntry[K comparable, V any] struct {
	key K
	val V
}

// newLRU returns an empty lru holding at most n entries (at least one).
func newLRU[K comparable, V any](n int) *lru[K, V] {
	return &lru[K, V]{max: max(n, 1), order: list.New(), items: make(map[K]*list.Element)}
}

// get returns the value of k and marks it recently used.
func (c *lru[K, V]) get(k K) (V, bool) {
	el, ok := c.items[k]
	if !ok {
		var zero V
		return zero, false
	}
	c.order.MoveToFront(el)
	return el.Value.(*lruEntry[K, V]).val, true
}

// put sets k to v, marks it recently used and evicts the least recently
// used entry when the bound is exceeded.
func (c *lru[K, V]) put(k K, v V) {
	if el, ok := c.items[k]; ok {
		el.Value.(*lruEntry[K, V]).val = v
		c.order.MoveToFront(el)
		return
	}
	c.items[k] = c.order.PushFront(&lruEntry[K, V]{key: k, val: v})
	if c.order.Len() > c.max {
		oldest := c.order.Back()
		c.order.Remove(oldest)
		delete(c.items, oldest.Value.(*lruEntry[K, V]).key)
	}
}

// remove deletes k if present.
func (c *lru[K, V]) remove(k K) {
	if el, ok := c.items[k]; ok {
		c.order.Remove(el)
		delete(c.items, k)
	}
}

// len returns the number of entries.
func (c *lru[K, V]) len() int { return c.order.Len() }
