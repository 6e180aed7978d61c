package fakemender

import (
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"strings"

	"github.com/mender-mtls/mtls-agent/internal/menderapi"
)

// maxPerPage is the largest per_page of every paged list.
const maxPerPage = 500

// paging is a parsed page/per_page pair.
type paging struct{ page, perPage int }

// parsePaging reads page and per_page (defaults 1 and 20, per_page at most
// 500), as Mender's services do.
func parsePaging(r *http.Request) (paging, error) {
	q := r.URL.Query()
	pg := paging{page: 1, perPage: 20}
	var err error
	if v := q.Get("page"); v != "" {
		if pg.page, err = strconv.Atoi(v); err != nil || pg.page < 1 {
			return paging{}, errors.New("invalid page query: want an integer ≥ 1")
		}
	}
	if v := q.Get("per_page"); v != "" {
		if pg.perPage, err = strconv.Atoi(v); err != nil || pg.perPage < 1 || pg.perPage > maxPerPage {
			return paging{}, fmt.Errorf("invalid per_page query: want an integer in 1..%d", maxPerPage)
		}
	}
	return pg, nil
}

// parsePagingOrFail is parsePaging answering 400 itself.
func parsePagingOrFail(w http.ResponseWriter, r *http.Request, rc *reqCtx) (paging, bool) {
	pg, err := parsePaging(r)
	if err != nil {
		menderapi.WriteError(w, http.StatusBadRequest, err.Error(), rc.id)
		return paging{}, false
	}
	return pg, true
}

// bounds returns the slice bounds of the page in a list of total items.
func (pg paging) bounds(total int) (start, end int) {
	start = min((pg.page-1)*pg.perPage, total)
	return start, min(start+pg.perPage, total)
}

// setHeaders sets X-Total-Count and the relative Link header (first, prev
// when page > 1, next when more items follow, last) on w. Links keep the
// request's other query parameters.
func (pg paging) setHeaders(w http.ResponseWriter, r *http.Request, total int) {
	q := r.URL.Query()
	link := func(p int, rel string) string {
		lq := maps.Clone(q)
		lq.Set("page", strconv.Itoa(p))
		lq.Set("per_page", strconv.Itoa(pg.perPage))
		return fmt.Sprintf("<%s?%s>; rel=%q", r.URL.Path, lq.Encode(), rel)
	}
	links := []string{link(1, "first")}
	if pg.page > 1 {
		links = append(links, link(pg.page-1, "prev"))
	}
	if _, end := pg.bounds(total); end < total {
		links = append(links, link(pg.page+1, "next"))
	}
	last := max(1, (total+pg.perPage-1)/pg.perPage)
	links = append(links, link(last, "last"))
	w.Header().Set("Link", strings.Join(links, ", "))
	w.Header().Set("X-Total-Count", strconv.Itoa(total))
}

// writePage answers 200 with the page of all and the paging headers.
func writePage[T any](w http.ResponseWriter, r *http.Request, pg paging, all []T) {
	start, end := pg.bounds(len(all))
	pg.setHeaders(w, r, len(all))
	out := make([]T, 0, end-start)
	out = append(out, all[start:end]...)
	writeJSON(w, http.StatusOK, out)
}
