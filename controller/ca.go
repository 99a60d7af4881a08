package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/eastguard/eastguard/controller/store"
	"github.com/eastguard/eastguard/internal/pki"
)

// LoadCA returns the controller's CA from the store. On first start it
// creates one, or imports the operator's (userCert and userKey, PEM) when
// given. A store that already has a CA keeps it: giving another one is an
// error, never a silent switch (every agent trusts the stored one).
func LoadCA(ctx context.Context, st store.Store, userCert, userKey []byte, log *zap.Logger) (*pki.CA, error) {
	certPEM, keyPEM, err := st.CA(ctx)
	switch {
	case err == nil:
		ca, err := pki.LoadCA(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("stored CA: %w", err)
		}
		if userCert != nil {
			user, err := pki.ParseCertificatePEM(userCert)
			if err != nil {
				return nil, fmt.Errorf("--ca-cert: %w", err)
			}
			if !bytes.Equal(user.Raw, ca.Cert.Raw) {
				return nil, errors.New("--ca-cert differs from the CA this controller already uses; agents trust the stored one (start with a new data dir to change CAs)")
			}
		}
		return ca, nil
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	var ca *pki.CA
	if userCert != nil {
		if ca, err = pki.LoadCA(userCert, userKey); err != nil {
			return nil, fmt.Errorf("--ca-cert/--ca-key: %w", err)
		}
		keyPEM = userKey
		log.Info("importing the CA given with --ca-cert", zap.String("ca-subject", ca.Cert.Subject.String()))
	} else {
		if ca, keyPEM, err = pki.NewCA(time.Now()); err != nil {
			return nil, err
		}
		log.Info("built-in CA created", zap.String("ca-subject", ca.Cert.Subject.String()))
	}
	if err := st.InitCA(ctx, ca.CertPEM, keyPEM); err != nil {
		return nil, err
	}
	log.Info("CA ready", zap.String("ca-fingerprint", ca.Fingerprint()), zap.Time("ca-expiry", ca.Cert.NotAfter))
	return ca, nil
}
