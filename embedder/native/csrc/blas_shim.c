/* The plain CBLAS names MLX's CPU backend binds to (cblas_sgemm, cblas_dgemm, cblas_cgemm), forwarded to
   scipy-openblas32, which exports them with a `scipy_` prefix. Built and loaded by embedder/blas.py. */

typedef int blas_int;

void scipy_cblas_sgemm(int order, int ta, int tb, blas_int m, blas_int n, blas_int k, float alpha, const float *a,
                       blas_int lda, const float *b, blas_int ldb, float beta, float *c, blas_int ldc);
void scipy_cblas_dgemm(int order, int ta, int tb, blas_int m, blas_int n, blas_int k, double alpha, const double *a,
                       blas_int lda, const double *b, blas_int ldb, double beta, double *c, blas_int ldc);
void scipy_cblas_cgemm(int order, int ta, int tb, blas_int m, blas_int n, blas_int k, const void *alpha,
                       const void *a, blas_int lda, const void *b, blas_int ldb, const void *beta, void *c,
                       blas_int ldc);

void cblas_sgemm(int order, int ta, int tb, blas_int m, blas_int n, blas_int k, float alpha, const float *a,
                 blas_int lda, const float *b, blas_int ldb, float beta, float *c, blas_int ldc) {
  scipy_cblas_sgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_dgemm(int order, int ta, int tb, blas_int m, blas_int n, blas_int k, double alpha, const double *a,
                 blas_int lda, const double *b, blas_int ldb, double beta, double *c, blas_int ldc) {
  scipy_cblas_dgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

void cblas_cgemm(int order, int ta, int tb, blas_int m, blas_int n, blas_int k, const void *alpha, const void *a,
                 blas_int lda, const void *b, blas_int ldb, const void *beta, void *c, blas_int ldc) {
  scipy_cblas_cgemm(order, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
